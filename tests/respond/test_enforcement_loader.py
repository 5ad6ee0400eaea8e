"""The ``enforcement`` section: defaults, every field read, and each problem reported
at its location (file:line:column), all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.errors import PolicyError
from authz.policy.enforcement_config import EnforcementConfig, EnforcementRedisConfig
from authz.policy.loader import load_policy

HEAD = """\
routes:
  - {name: h, path: /h, methods: [GET], public: true}
"""


def load(tmp_path: Path, text: str) -> EnforcementConfig | None:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + text)
    return load_policy(path).enforcement


def problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return [(loc.replace(str(path), "p"), msg) for loc, msg in caught.value.problems]


def test_absent_and_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "") is None
    config = load(tmp_path, "enforcement: {}\n")
    assert config is not None and config.store is None and config.store_name == "memory"
    assert (config.max_entries, config.block_ttl, config.revoke_ttl) == (100_000, 900, 86_400)
    assert (config.throttle.requests, config.throttle.per) == (10, 60)
    assert config.step_up.acr_values == () and config.step_up.max_age == 300
    assert config.location.endswith("p.yaml:3:14")


def test_every_field(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
enforcement:
  store: {redis: "redis://127.0.0.1:6390/2", on_error: deny, timeout: 20ms,
          key_prefix: "x:", retry_interval: 2s}
  max_entries: 500
  step_up: {acr_values: ["urn:example:mfa"], max_age: 2m}
  throttle: {requests: 3, per: 10s}
  block_ttl: 1h
  revoke_ttl: 2d
  actions: 50
""",
    )
    assert config is not None
    assert config.store == EnforcementRedisConfig(
        url="redis://127.0.0.1:6390/2", on_error="deny", timeout=0.02, key_prefix="x:",
        retry_interval=2.0,
    )  # fmt: skip
    assert config.max_entries == 500 and config.actions == 50
    assert config.step_up.acr_values == ("urn:example:mfa",) and config.step_up.max_age == 120
    assert (config.throttle.requests, config.throttle.per) == (3, 10)
    assert (config.block_ttl, config.revoke_ttl) == (3600, 172_800)


def test_problems_with_locations(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
enforcement:
  store: {redis: "http://cache:6379", on_error: maybe}
  max_entries: 0
  step_up: {acr_values: [mfa, mfa, 'a"b'], max_age: 0s}
  throttle: {requests: 5, per: 0s}
  revoke_ttl: 1h
  actions: 5
  block_ttl: soon
""",
    )
    assert found == [
        ("p:4:18", "$.enforcement.store.redis: not a Redis URL: 'http://cache:6379' "
                   "(redis://, rediss:// or unix://)"),
        ("p:4:49", "$.enforcement.store.on_error: must be one of allow, deny"),
        ("p:5:16", "$.enforcement.max_entries: 0 is less than the minimum of 1"),
        ("p:6:31", "$.enforcement.step_up.acr_values[1]: 'mfa' is listed twice"),
        ("p:6:36", "$.enforcement.step_up.acr_values[2]: an acr value goes into a quoted "
                   "header parameter: no quotes, backslashes or control characters"),
        ("p:6:53", "$.enforcement.step_up.max_age: must be more than zero"),
        ("p:7:32", "$.enforcement.throttle.per: must be more than zero"),
        ("p:10:14", "$.enforcement.block_ttl: invalid value: Seconds as a number, or a string "
                   "like 30s, 5m, 1h, 500ms."),
    ]  # fmt: skip


def test_store_must_be_memory_or_redis(tmp_path: Path) -> None:
    assert problems(tmp_path, "enforcement: {store: disk}\n") == [
        ("p:3:22", "$.enforcement.store: 'memory' was expected")
    ]
    assert problems(tmp_path, "enforcement: {store: {url: redis://x}}\n") == [
        ("p:3:23", "$.enforcement.store: unknown field 'url'"),
    ]


def test_the_readme_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Automatic responses: blocks, revocations, throttles, step-up", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    example = example.replace("store: memory                   # or", "store: memory  # or")
    config = load(tmp_path, example)
    assert config is not None and config.store is None
    assert config.step_up.acr_values == ("urn:example:mfa",) and config.actions == 1000
    assert (config.throttle.requests, config.block_ttl, config.revoke_ttl) == (10, 900, 86400)
    assert config.public_routes == "skip"


def test_public_routes_is_skip_or_check(tmp_path: Path) -> None:
    assert load(tmp_path, "enforcement: {public_routes: check}\n").public_routes == "check"
    with pytest.raises(PolicyError) as err:
        load(tmp_path, "enforcement: {public_routes: always}\n")
    assert "$.enforcement.public_routes" in str(err.value.problems)


def test_a_reload_that_drops_the_section_is_a_widening(tmp_path: Path) -> None:
    from authz.policy.diff import widenings

    path = tmp_path / "p.yaml"
    path.write_text(HEAD + "enforcement: {}\n")
    with_section = load_policy(path)
    path.write_text(HEAD)
    without = load_policy(path)
    assert [f.code for f in widenings(with_section, without)] == ["enforcement_removed"]
    assert widenings(without, with_section) == []
