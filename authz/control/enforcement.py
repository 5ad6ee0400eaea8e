"""The control plane's enforcement calls: list, add and lift blocks and revocations
(and throttles, step-ups), and list the detectors' recent actions.

- :class:`EnforcementServicer` answers for one process's
  :class:`~authz.respond.enforcer.Enforcer` (mixed into
  :class:`~authz.control.servicer.AdminServicer`). Every add and lift is logged on
  ``authz.control`` with the caller the control plane authenticated; on a worker's
  socket (``--workers N``) that is the caller the supervisor authenticated, which it
  passes in the request's ``operator`` (a worker's socket only admits the supervisor).
- :class:`EnforcementFanOut` answers for every worker (mixed into
  :class:`~authz.control.workers.FanOutAdmin`): a change goes to each worker, so it
  holds in all of them even with the in-process store; lists are merged
  (:func:`merge_enforcements`, :func:`merge_actions`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from authz.control import auth
from authz.respond.enforcer import Enforcer
from authz.respond.records import ActionRecord
from authz.respond.stage import find_enforcer
from authz.respond.table import Entry
from authz.respond.targets import TargetError
from authz.v1 import admin_pb2

if TYPE_CHECKING:
    from authz.engine import PolicyEngine

log = logging.getLogger("authz.control")

DEFAULT_ACTIONS = 100
NO_ENFORCEMENT = (
    "this service's policy has no enforcement: (or detection:) section: nothing to list, "
    "add or lift"
)


def entry_to_proto(entry: Entry) -> Any:
    return admin_pb2.Enforcement(
        response=entry.response, target_kind=entry.target_kind, target=entry.target,
        created=entry.created, expires=entry.expires, source=entry.source, by=entry.by,
        evidence=dict(entry.evidence), monitor=entry.monitor, note=entry.note,
    )  # fmt: skip


def action_to_proto(record: ActionRecord) -> Any:
    a = record.action
    return admin_pb2.ActionEntry(
        time=a.time, detector=a.detector, response=a.response, target_kind=a.target_kind,
        target=a.target, ttl=a.ttl, reason=a.reason,
        evidence={str(k): str(v) for k, v in a.evidence.items()}, monitor=a.monitor,
        outcome=record.outcome, detail=record.detail,
    )  # fmt: skip


def _operator(request: Any) -> str:
    """Who asked: the authenticated caller, or (on a worker's socket) the one the
    supervisor authenticated."""
    caller = auth.CALLER.get()
    if caller == auth.WORKER_SOCKET and request.operator:
        return str(request.operator)
    return caller or "unknown"


class EnforcementServicer:
    """The enforcement calls of one process (see the module docstring)."""

    _engine: PolicyEngine

    async def _enforcer(self, context: Any) -> Enforcer:
        found = find_enforcer(self._engine.policy.shared)
        if found is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_ENFORCEMENT)
        assert found is not None
        return found

    async def ListEnforcements(self, request: Any, context: Any) -> Any:
        enforcer = await self._enforcer(context)
        entries = enforcer.entries(tuple(request.responses))
        return admin_pb2.Enforcements(
            enforcements=[entry_to_proto(e) for e in sorted(entries, key=lambda e: e.created)],
            workers=1,
            store=enforcer.config.store_name,
        )

    async def AddEnforcement(self, request: Any, context: Any) -> Any:
        enforcer = await self._enforcer(context)
        who = _operator(request)
        try:
            entry = enforcer.add(
                request.response, request.target_kind, request.target, request.ttl_seconds,
                by=who, note=request.note,
            )  # fmt: skip
        except TargetError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.warning("enforcement added by %s: %s%s", who, entry.describe(), _note(entry.note))
        return entry_to_proto(entry)

    async def LiftEnforcement(self, request: Any, context: Any) -> Any:
        enforcer = await self._enforcer(context)
        who = _operator(request)
        try:
            lifted = enforcer.lift(request.response, request.target_kind, request.target)
        except TargetError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        what = f"{request.response} {request.target_kind} {request.target}"
        if lifted is not None:
            log.warning("enforcement lifted by %s: %s", who, lifted.describe())
            return admin_pb2.LiftEnforcementResponse(
                lifted=True, enforcement=entry_to_proto(lifted), workers=1
            )
        log.warning("enforcement lift by %s: %s (nothing in force here)", who, what)
        return admin_pb2.LiftEnforcementResponse(lifted=False, workers=1)

    async def ListActions(self, request: Any, context: Any) -> Any:
        enforcer = await self._enforcer(context)
        records = await enforcer.shared_actions(request.limit or DEFAULT_ACTIONS, request.detector)
        return admin_pb2.Actions(actions=[action_to_proto(r) for r in records], workers=1)


def _note(note: str) -> str:
    return f" ({note})" if note else ""


# --------------------------------------------------------------------------- --workers N


def merge_enforcements(parts: Sequence[Any]) -> Any:
    """One list from every worker's: one entry per (response, kind, target), the one
    that lasts longest; oldest first."""
    merged = admin_pb2.Enforcements(workers=sum(max(p.workers, 1) for p in parts))
    by_key: dict[tuple[str, str, str], Any] = {}
    for part in parts:
        merged.store = merged.store or part.store
        for e in part.enforcements:
            key = (e.response, e.target_kind, e.target)
            if key not in by_key or e.expires > by_key[key].expires:
                by_key[key] = e
    merged.enforcements.extend(sorted(by_key.values(), key=lambda e: (e.created, e.target)))
    return merged


def merge_actions(parts: Sequence[Any], limit: int) -> Any:
    """Every worker's actions, newest first, at most ``limit`` (each once)."""
    merged = admin_pb2.Actions(workers=sum(max(p.workers, 1) for p in parts))
    seen: set[tuple[Any, ...]] = set()
    actions = []
    for part in parts:  # with a Redis store every worker answers the same list
        for a in part.actions:
            key = (a.time, a.detector, a.response, a.target_kind, a.target, a.outcome)
            if key not in seen:
                seen.add(key)
                actions.append(a)
    actions.sort(key=lambda a: -a.time)
    merged.actions.extend(actions[:limit])
    return merged


class EnforcementFanOut:
    """The enforcement calls of ``--workers N``: changes to every worker, lists merged."""

    _sockets: tuple[str, ...]
    _timeout: float

    def _stub(self, socket: str) -> Any:
        raise NotImplementedError

    async def _every(self, name: str, request: Any, context: Any) -> list[Any]:
        """Every worker's answer; the workers' own error when none answered."""
        calls = [
            getattr(self._stub(s), name)(
                request, timeout=self._timeout, metadata=auth.caller_metadata()
            )
            for s in self._sockets
        ]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        good = [a for a in answers if not isinstance(a, BaseException)]
        for socket, answer in zip(self._sockets, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("control plane: worker %s did not answer %s: %s", socket, name, answer)
        if not good:
            for answer in answers:
                if isinstance(answer, grpc.aio.AioRpcError):
                    await context.abort(answer.code(), answer.details() or "")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no worker answered")
        return good

    @staticmethod
    def _as_caller(request: Any) -> Any:
        copy = type(request)()
        copy.CopyFrom(request)
        copy.operator = auth.CALLER.get() or "unknown"
        return copy

    async def ListEnforcements(self, request: Any, context: Any) -> Any:
        return merge_enforcements(await self._every("ListEnforcements", request, context))

    async def AddEnforcement(self, request: Any, context: Any) -> Any:
        answers = await self._every("AddEnforcement", self._as_caller(request), context)
        return answers[0]

    async def LiftEnforcement(self, request: Any, context: Any) -> Any:
        answers = await self._every("LiftEnforcement", self._as_caller(request), context)
        lifted = [a for a in answers if a.lifted]
        merged = admin_pb2.LiftEnforcementResponse(
            lifted=bool(lifted), workers=sum(max(a.workers, 1) for a in answers)
        )
        if lifted:
            merged.enforcement.CopyFrom(lifted[0].enforcement)
        return merged

    async def ListActions(self, request: Any, context: Any) -> Any:
        parts = await self._every("ListActions", request, context)
        return merge_actions(parts, request.limit or DEFAULT_ACTIONS)
