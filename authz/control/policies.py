"""The control plane's policy calls: list the kept versions, roll back, reload.

- :class:`PolicyServicer` answers for one process (mixed into
  :class:`~authz.control.servicer.AdminServicer`) through its
  :class:`~authz.lifecycle.PolicyLifecycle`. Every rollback and reload is logged on
  ``authz.control`` with the caller the control plane authenticated (on a worker's
  socket: the one the supervisor passes in ``operator``), besides the gate's call line.
- :class:`PolicyFanOut` answers for every worker (mixed into
  :class:`~authz.control.workers.FanOutAdmin`): a rollback or reload goes to each
  worker; a worker that fails it is named in ``errors``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from authz.control.enforcement import _operator
from authz.v1 import admin_pb2

if TYPE_CHECKING:
    from authz.lifecycle import Outcome, PolicyLifecycle

log = logging.getLogger("authz.control")

NO_LIFECYCLE = "this process keeps no policy versions (not a running authz serve)"


def outcome_to_proto(outcome: Outcome) -> Any:
    return admin_pb2.PolicyChange(
        changed=outcome.changed, previous=outcome.previous, active=outcome.active,
        on_disk=outcome.on_disk, warning=outcome.warning, workers=1,
    )  # fmt: skip


class PolicyServicer:
    """The policy calls of one process (see the module docstring)."""

    _policies: PolicyLifecycle | None

    async def _lifecycle(self, context: Any) -> PolicyLifecycle:
        if self._policies is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_LIFECYCLE)
        assert self._policies is not None
        return self._policies

    async def ListPolicies(self, request: Any, context: Any) -> Any:
        lifecycle = await self._lifecycle(context)
        versions = lifecycle.versions()
        answer = admin_pb2.PolicyVersions(
            capacity=lifecycle.capacity, on_disk=lifecycle.on_disk, workers=1
        )
        for i, v in enumerate(versions):
            answer.versions.add(
                version=v.version, source=v.source, loaded=v.loaded, activated=v.activated,
                origin=v.origin, by=v.by, active=i == 0, routes=len(v.config.routes),
            )  # fmt: skip
        if versions:
            answer.active.append(versions[0].version)
        return answer

    async def _change(self, what: str, request: Any, context: Any, call: Any) -> Any:
        from authz.lifecycle import LifecycleError

        await self._lifecycle(context)
        who = _operator(request)
        try:
            outcome = await call(who)
        except LifecycleError as exc:
            log.warning("policy %s by %s refused: %s", what, who, exc)
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        if outcome.changed:
            log.warning("policy %s by %s: %s -> %s", what, who, outcome.previous, outcome.active)
        else:
            log.warning("policy %s by %s: %s already active", what, who, outcome.active)
        if outcome.warning:
            log.warning("policy %s: %s", what, outcome.warning)
        return outcome_to_proto(outcome)

    async def RollbackPolicy(self, request: Any, context: Any) -> Any:
        lifecycle = await self._lifecycle(context)
        return await self._change(
            "rollback", request, context, lambda who: lifecycle.rollback(request.version, who)
        )

    async def ReloadPolicy(self, request: Any, context: Any) -> Any:
        lifecycle = await self._lifecycle(context)
        return await self._change("reload", request, context, lifecycle.reload)


# --------------------------------------------------------------------------- --workers N


def merge_versions(parts: Sequence[Any]) -> Any:
    """One list from every worker's: each version once (the first worker's entry),
    in the first worker's order; ``active`` lists each distinct active version."""
    merged = admin_pb2.PolicyVersions(workers=sum(max(p.workers, 1) for p in parts))
    seen: set[str] = set()
    for part in parts:
        merged.capacity = merged.capacity or part.capacity
        merged.on_disk = merged.on_disk or part.on_disk
        for version in part.active:
            if version not in merged.active:
                merged.active.append(version)
        for v in part.versions:
            if v.version not in seen:
                seen.add(v.version)
                merged.versions.append(v)
    return merged


class PolicyFanOut:
    """The policy calls of ``--workers N``: every worker asked, answers merged."""

    _sockets: tuple[str, ...]
    _timeout: float

    def _stub(self, socket: str) -> Any:
        raise NotImplementedError

    async def _every(self, name: str, request: Any, context: Any) -> list[Any]:
        raise NotImplementedError

    @staticmethod
    def _as_caller(request: Any) -> Any:
        raise NotImplementedError

    async def ListPolicies(self, request: Any, context: Any) -> Any:
        return merge_versions(await self._every("ListPolicies", request, context))

    async def _change_all(self, name: str, request: Any, context: Any) -> Any:
        request = self._as_caller(request)
        # a swap waits for the new policy's keys: allow the workers that long
        timeout = self._timeout + 15.0
        calls = [getattr(self._stub(s), name)(request, timeout=timeout) for s in self._sockets]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        good = [a for a in answers if not isinstance(a, BaseException)]
        errors = []
        for socket, answer in zip(self._sockets, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                errors.append(f"{socket}: {answer.code().name}: {answer.details()}")
            elif isinstance(answer, BaseException):
                errors.append(f"{socket}: {answer}")
        for line in errors:
            log.warning("control plane: worker did not apply %s: %s", name, line)
        if not good:
            for answer in answers:
                if isinstance(answer, grpc.aio.AioRpcError):
                    await context.abort(answer.code(), answer.details() or "")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no worker answered")
        merged = admin_pb2.PolicyChange()
        merged.CopyFrom(good[0])
        merged.changed = any(a.changed for a in good)
        merged.workers = sum(max(a.workers, 1) for a in good)
        merged.errors.extend(errors)
        return merged

    async def RollbackPolicy(self, request: Any, context: Any) -> Any:
        return await self._change_all("RollbackPolicy", request, context)

    async def ReloadPolicy(self, request: Any, context: Any) -> Any:
        return await self._change_all("ReloadPolicy", request, context)
