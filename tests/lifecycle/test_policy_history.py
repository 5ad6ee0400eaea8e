"""The kept policy versions: the active one first, one entry per version, bounded,
found by a unique prefix."""

from __future__ import annotations

import pytest

from authz.policy.config import PolicyConfig
from authz.policy.history import PolicyHistory, VersionNotFound


def config(version: str) -> PolicyConfig:
    return PolicyConfig(version=version, source="/p.yaml")


def test_active_first_bounded_one_entry_per_version() -> None:
    now = iter(range(100))
    history = PolicyHistory(3, clock=lambda: float(next(now)))
    for v in ("sha256:aaaa1111", "sha256:bbbb2222", "sha256:cccc3333"):
        history.record(config(v), "reload", "file")
    back = history.record(config("sha256:aaaa1111"), "rollback", "token:12345678")
    assert (back.loaded, back.activated, back.origin, back.by) == (0.0, 3.0, "rollback",
                                                                   "token:12345678")  # fmt: skip
    assert [v.version for v in history.versions] == [
        "sha256:aaaa1111", "sha256:cccc3333", "sha256:bbbb2222",
    ]  # fmt: skip
    history.record(config("sha256:dddd4444"), "reload", "file")
    assert [v.version for v in history.versions] == [
        "sha256:dddd4444", "sha256:aaaa1111", "sha256:cccc3333",
    ]  # the least recently active dropped  # fmt: skip
    assert history.active is not None and history.active.version == "sha256:dddd4444"


def test_find_by_prefix() -> None:
    history = PolicyHistory()
    for v in ("sha256:abcd1111", "sha256:abcd2222"):
        history.record(config(v), "reload", "file")
    assert history.find("sha256:abcd1111").version == "sha256:abcd1111"
    assert history.find("abcd2").version == "sha256:abcd2222"
    with pytest.raises(VersionNotFound, match="names 2 kept versions"):
        history.find("sha256:abcd")
    with pytest.raises(VersionNotFound, match="at least 4 of its hex digits"):
        history.find("ab")
    with pytest.raises(VersionNotFound, match="no kept policy version 'ffff'"):
        history.find("ffff")


@pytest.mark.parametrize("capacity", [0, 101])
def test_capacity_is_bounded(capacity: int) -> None:
    with pytest.raises(ValueError, match="keep 1 to 100 versions"):
        PolicyHistory(capacity)
