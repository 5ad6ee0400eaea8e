"""The last K policy versions a service ran, for ``authz policy list|rollback``.

A :class:`PolicyHistory` keeps, per version (its content hash), the compiled
:class:`~authz.policy.config.PolicyConfig` and when and how it became active. The
active version is first, the others follow most recently active first; a version
made active again moves to the front (one entry per version). At most ``capacity``
are kept: the least recently active is dropped. It lives in memory only: a restart
starts from the policy file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from authz.policy.config import PolicyConfig

DEFAULT_CAPACITY = 5
MAX_CAPACITY = 100
#: The shortest version prefix a rollback accepts (hex digits after "sha256:").
MIN_PREFIX = 4


class VersionNotFound(LookupError):
    """No kept version is (or starts with) what was asked for, or several do."""


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    version: str
    source: str
    loaded: float  # first loaded by this process (unix time)
    activated: float  # last made active
    origin: str  # start | reload | rollback
    by: str  # the operator, or "file" (poller, SIGHUP), or "start"
    config: PolicyConfig


class PolicyHistory:
    """The versions kept, the active one first (see the module docstring)."""

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"policy history: keep 1 to {MAX_CAPACITY} versions, not {capacity}")
        self.capacity = capacity
        self._clock = clock
        self._versions: list[PolicyVersion] = []

    @property
    def versions(self) -> tuple[PolicyVersion, ...]:
        return tuple(self._versions)

    @property
    def active(self) -> PolicyVersion | None:
        return self._versions[0] if self._versions else None

    def record(self, config: PolicyConfig, origin: str, by: str) -> PolicyVersion:
        """``config`` became active (``origin``, by ``by``); returns its entry."""
        now = self._clock()
        kept = [v for v in self._versions if v.version == config.version]
        if kept:
            entry = replace(kept[0], activated=now, origin=origin, by=by)
        else:
            entry = PolicyVersion(config.version, config.source, now, now, origin, by, config)
        rest = [v for v in self._versions if v.version != config.version]
        self._versions = [entry, *rest][: self.capacity]
        return entry

    def find(self, wanted: str) -> PolicyVersion:
        """The kept version ``wanted`` names: whole, or a unique prefix of its hash."""
        text = wanted.strip()
        digits = text.removeprefix("sha256:")
        if len(digits) < MIN_PREFIX:
            raise VersionNotFound(
                f"give a version (or at least {MIN_PREFIX} of its hex digits), got {wanted!r}"
            )
        found = [v for v in self._versions if v.version.removeprefix("sha256:").startswith(digits)]
        if len(found) == 1:
            return found[0]
        kept = ", ".join(v.version for v in self._versions) or "none"
        if not found:
            raise VersionNotFound(f"no kept policy version {wanted!r} (kept: {kept})")
        raise VersionNotFound(f"{wanted!r} names {len(found)} kept versions: give more digits")
