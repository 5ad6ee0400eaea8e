"""Policy versions of a running service: list, roll back, reload (the control plane's
``ListPolicies``, ``RollbackPolicy``, ``ReloadPolicy``).

:class:`PolicyLifecycle` works on an :class:`authz.server.Service` (seen through the
:class:`Service` protocol): its
:class:`~authz.policy.history.PolicyHistory`, its reload lock and its swap (a
rollback builds the kept compiled config again, waits for its providers and swaps
it in like a reload, so the decisions, the widening log and the reload counters
are the same).

A rollback lasts until the policy file changes. The service keeps the digest of
the file's content as the content in use, so the poller (and SIGHUP, which loads
only a changed file) does not load the file over the rollback; an edit of the file,
``ReloadPolicy`` (which loads it even unchanged), a restart, or a worker restarted
by the supervisor loads the file again. To keep a rolled-back version, restore the
file to it too; every answer says whether the file and the active version differ.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from authz.compiled import CompiledPolicy
from authz.engine import PolicyEngine
from authz.policy.history import PolicyHistory, PolicyVersion, VersionNotFound
from authz.serve_options import ServeOptions
from authz.stages import Shared


class Service(Protocol):
    """What a rollback needs of :class:`authz.server.Service`."""

    options: ServeOptions
    shared: Shared
    engine: PolicyEngine | None
    history: PolicyHistory
    disk_version: str
    reload_lock: asyncio.Lock

    async def swap_in(self, policy: CompiledPolicy, origin: str, by: str) -> bool: ...

    async def reload(self, *, force: bool = False, by: str = "file") -> bool: ...


class LifecycleError(Exception):
    """A rollback or reload that did not happen; ``code`` is a gRPC status name
    (NOT_FOUND, FAILED_PRECONDITION)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Outcome:
    changed: bool
    previous: str
    active: str
    on_disk: str

    @property
    def warning(self) -> str:
        """What a restart would do, when the file does not hold the active version."""
        if self.active == self.on_disk or not self.on_disk:
            return ""
        return (
            f"the policy file still holds {self.on_disk}: this process serves {self.active} "
            "until the file changes, a reload or a restart, which load the file again; "
            "restore the file to this version to keep it"
        )


class PolicyLifecycle:
    """What the control plane asks of the service about policy versions."""

    def __init__(self, service: Service) -> None:
        self._service = service

    @property
    def capacity(self) -> int:
        return self._service.history.capacity

    @property
    def on_disk(self) -> str:
        return self._service.disk_version

    def versions(self) -> tuple[PolicyVersion, ...]:
        return self._service.history.versions

    def _active(self) -> str:
        engine = self._service.engine
        assert engine is not None
        return engine.policy.version

    async def rollback(self, wanted: str, by: str) -> Outcome:
        """Make the kept version ``wanted`` active (raises LifecycleError)."""
        service = self._service
        async with service.reload_lock:
            try:
                entry = service.history.find(wanted)
            except VersionNotFound as exc:
                raise LifecycleError("NOT_FOUND", str(exc)) from None
            previous = self._active()
            if entry.version == previous:
                return Outcome(False, previous, previous, self.on_disk)
            try:
                policy = CompiledPolicy(entry.config, shared=service.shared)
            except BaseException:
                service.shared.runtimes.abandon()
                raise
            if not await service.swap_in(policy, "rollback", by):
                raise LifecycleError(
                    "FAILED_PRECONDITION",
                    f"{entry.version} did not become ready (its providers' keys within "
                    f"{service.options.ready_timeout:.0f}s); still serving {previous}",
                )
            return Outcome(True, previous, entry.version, self.on_disk)

    async def reload(self, by: str) -> Outcome:
        """Load the policy file now, even unchanged (raises LifecycleError)."""
        previous = self._active()
        if not await self._service.reload(force=True, by=by):
            raise LifecycleError(
                "FAILED_PRECONDITION",
                f"the policy file was not loaded (invalid, or its providers not ready: "
                f"see the service's log); still serving {self._active()}",
            )
        active = self._active()
        return Outcome(active != previous, previous, active, self.on_disk)
