"""PolicyEngine: runs the stages on a Request and returns a Decision.

The stages are built at policy load from the registry (:mod:`authz.pipeline`):
canonical path -> ``request`` gates -> route -> ``pre`` -> identity -> authorize ->
``post``, then ``observe`` stages see the decision (see :mod:`authz.stages`). Each
raises an :class:`~authz.errors.AuthzError` to deny; the engine maps it to a
Decision (status, the challenge the error names, JSON body), applies monitor mode,
and writes exactly one decision record. It has no branch for any stage.
``check`` never raises.

A :class:`~authz.compiled.CompiledPolicy` holds everything prepared at load (route
table, providers, per-route plans, header lists); swapping it is one assignment, so a
reload is atomic for every request that starts after it.

Over 400 lines for now: the check loop, the record build (one positional tuple of
every field, audit and classification included) and the explain loop read the same
compiled plan; the record build is the next to move out.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from authz import pipeline
from authz import reasons as R
from authz.audit.sink import DecisionSink, NullSink
from authz.compiled import IDENTITY_HEADER_CACHE_SIZE, identity_header_parts

# CompiledPolicy is re-exported: most callers import it with PolicyEngine from here.
from authz.compiled import CompiledPolicy as CompiledPolicy
from authz.errors import AuditUnavailable, AuthzError, DecisionLogUnavailable, InternalError
from authz.explain import Step
from authz.identity.base import Clock
from authz.model import Decision, Identity, Request
from authz.paths import path_shape
from authz.record import DecisionListener, make_record, trace_context
from authz.stages import Context, Stage, step_of
from authz.telemetry.classes import class_counters, no_count
from authz.telemetry.metrics import Metrics, report_table
from authz.telemetry.tracing import DecisionTracer, Parent, StageMark

log = logging.getLogger("authz.engine")

MAX_UNDECLARED_SHAPES = 10_000
#: route x decision x reason combinations kept in ``authz_decisions_total`` (a policy
#: of 100 routes and ~10 reasons a route sees fits; past it: ``_other``)
MAX_DECISION_SERIES = 2048
#: the labels of ``authz_decisions_total``
DECISION_LABELS = ("route", "decision", "reason")
#: the route label of a decision no route matched (its path never becomes a label)
UNDECLARED = "undeclared"
#: ... and of one made before routing (an invalid path, a global rate limit, a gate)
UNROUTED = "unrouted"


class PolicyEngine:
    """Decides requests against the current policy; swap() replaces it atomically."""

    def __init__(
        self,
        policy: CompiledPolicy,
        *,
        sink: DecisionSink | None = None,
        listeners: Sequence[DecisionListener] = (),
        metrics: Metrics | None = None,
        clock: Clock = time.time,
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        self._policy = policy
        self._sink = sink or NullSink()
        #: the other listeners' bound ``on_decision`` (the decision log is asked first)
        self._listeners = tuple(x.on_decision for x in listeners)
        self._configure_sink(policy)
        self._clock = clock
        prefix = os.urandom(6).hex()
        counter = itertools.count(1)
        self._new_id = id_factory or (lambda: f"{prefix}-{next(counter):x}")
        self.undeclared: dict[tuple[str, str], int] = {}
        #: the process's metrics (in memory unless the service passes its own)
        self.metrics: Metrics = metrics if metrics is not None else policy.shared.metrics
        report_table(
            self.metrics, "undeclared_shapes", self.undeclared.__len__, MAX_UNDECLARED_SHAPES
        )
        self._decisions = self.metrics.counter(
            "authz_decisions_total",
            "decisions by route name (undeclared: none matched; unrouted: decided before"
            " routing), decision (allow|deny|monitor) and reason code",
            DECISION_LABELS,
            max_series=MAX_DECISION_SERIES,
        )
        #: (route, outcome, reason) -> its counter's bound ``inc`` (bounded: the policy's
        #: route names and the registry's codes, then _other): one dict get and one call
        #: per decision
        self._by_reason: dict[tuple[str, str, str], Callable[[], None]] = {}
        outcomes = self.metrics.counter(
            "authz_decision_outcomes_total", "decisions by outcome", ("decision",)
        )
        self._count_allow = outcomes.labels("allow").inc
        self._count_deny = outcomes.labels("deny").inc
        self._count_monitor = outcomes.labels("monitor").inc
        #: (outcome, data class) -> its counter's bound ``inc`` (all bound here)
        self._by_class = class_counters(self.metrics)
        #: ``--tracing`` (:mod:`authz.telemetry.tracing`); None: no span, no timing
        self.tracer: DecisionTracer | None = None
        self._undeclared_total = self.metrics.counter(
            "authz_undeclared_total", "requests no route declares (shapes: see inventory)"
        ).labels()

    @property
    def decisions(self) -> dict[str, int]:
        """Decisions so far by reason code (from the metrics)."""
        family = self.metrics.counter(
            "authz_decisions_total", "", DECISION_LABELS, max_series=MAX_DECISION_SERIES
        )
        out: dict[str, int] = {}
        for labels, s in getattr(family, "series", {}).items():
            out[labels[2]] = out.get(labels[2], 0) + int(s.value)
        return out

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    def swap(self, policy: CompiledPolicy) -> CompiledPolicy:
        """Make ``policy`` current; return the one it replaced."""
        self._configure_sink(policy)
        old, self._policy = self._policy, policy
        return old

    def _configure_sink(self, policy: CompiledPolicy) -> None:
        """The decision log's bound and wait come from the policy (its decision_log)."""
        if policy.audit is not None:
            policy.audit.apply()
        settings = policy.config.decision_log
        self._sink.configure(
            max_queue=settings.max_queue,
            block_ms=settings.block_ms,
            on_failure=settings.on_failure,
        )

    async def check(self, request: Request) -> Decision:
        """Decide one request. Never raises."""
        tracer = self.tracer
        if tracer is not None:
            parent = tracer.sample(request.trace or request.headers)
            if parent is not None:
                return await self._check_traced(request, tracer, parent)
        started = time.perf_counter()
        policy = self._policy
        decision_id = self._new_id()
        ctx = Context(request, "", "")
        shared = policy.shared
        shared.in_flight += 1  # read by load shedding
        try:
            try:
                # a step returns None when its stage is done (a synchronous stage),
                # else an awaitable: synchronous stages cost a call, not a coroutine
                for step in policy.head_steps:
                    pending = step(ctx)
                    if pending is not None:
                        await pending
                for step in ctx.plan.steps:
                    pending = step(ctx)
                    if pending is not None:
                        await pending
                decision = self._allow(policy, decision_id, ctx)
            except AuthzError as exc:
                decision = self._deny(policy, decision_id, exc, ctx)
        except Exception:
            log.exception("internal error deciding request %s", request.request_id)
            decision = self._deny(policy, decision_id, InternalError(), ctx)
        finally:
            shared.in_flight -= 1
        decision = self._record(request, decision, started, policy, ctx)
        if policy.observer_steps:
            ctx.decision = decision
            for observe in policy.observer_steps:
                try:
                    pending = observe(ctx)
                    if pending is not None:
                        await pending
                except Exception:  # an observer never changes or breaks a decision
                    log.exception("observer failed")
        return decision

    async def _check_traced(
        self, request: Request, tracer: DecisionTracer, parent: Parent
    ) -> Decision:
        """:meth:`check` for a decision that is traced: the same steps, each timed
        (:class:`StageMark`), then one span from the record. A loop of its own, so
        :meth:`check` pays nothing for tracing."""
        started_ns = time.time_ns()
        started = time.perf_counter()
        policy = self._policy
        decision_id = self._new_id()
        ctx = Context(request, "", "")
        shared = policy.shared
        marks: list[StageMark] = []
        shared.in_flight += 1
        try:
            try:
                for stage, step in zip(policy.head, policy.head_steps, strict=True):
                    await _marked(stage, step, ctx, marks)
                if ctx.plan is not None:
                    for stage, step in zip(ctx.plan.stages, ctx.plan.steps, strict=True):
                        await _marked(stage, step, ctx, marks)
                decision = self._allow(policy, decision_id, ctx)
            except AuthzError as exc:
                decision = self._deny(policy, decision_id, exc, ctx)
        except Exception:
            log.exception("internal error deciding request %s", request.request_id)
            decision = self._deny(policy, decision_id, InternalError(), ctx)
        finally:
            shared.in_flight -= 1
        decision = self._record(request, decision, started, policy, ctx)
        try:
            route = ctx.route
            tracer.export(
                ctx.record, parent, started_ns, marks, started, route.path if route else ""
            )
        except Exception:  # tracing never breaks a decision
            log.exception("decision span failed")
        if policy.observer_steps:
            ctx.decision = decision
            for observe in policy.observer_steps:
                try:
                    pending = observe(ctx)
                    if pending is not None:
                        await pending
                except Exception:
                    log.exception("observer failed")
        return decision

    async def explain(self, request: Request) -> tuple[Decision, tuple[Step, ...]]:
        """Decide ``request`` stage by stage and say what each stage did.

        A loop of its own, so :meth:`check` pays nothing for explain; see
        :mod:`authz.explain` for what is and is not done (no decision record).
        Never raises.
        """
        policy = self._policy
        decision_id = self._new_id()
        ctx = Context(request, "", "", explain=True)
        ran: dict[tuple[str, str], Step] = {}
        shared = policy.shared
        shared.in_flight += 1
        try:
            try:
                for stage in policy.head:
                    await _timed(stage, ctx, ran)
                for stage in ctx.plan.stages:
                    await _timed(stage, ctx, ran)
                decision = self._allow(policy, decision_id, ctx)
            except AuthzError as exc:
                decision = self._deny(policy, decision_id, exc, ctx)
        except Exception:
            log.exception("internal error explaining request %s", request.request_id)
            decision = self._deny(policy, decision_id, InternalError(), ctx)
        finally:
            shared.in_flight -= 1
        built = {(s.name, s.phase) for s in policy.head} | {
            (s.name, s.phase) for s in (ctx.plan.stages if ctx.plan is not None else ())
        }
        if ctx.plan is None:  # never routed: the route's stages are unknown, not absent
            built |= {key for key in policy.registered if key[1] in pipeline.ROUTE_PHASES}
        steps = []
        for name, phase in policy.registered:
            key = (name, phase)
            if key in ran:
                steps.append(ran[key])
            elif key in built or phase == "observe":
                steps.append(Step(name, phase, "skipped"))
            else:
                steps.append(Step(name, phase, "abstain"))
        return decision, tuple(steps)

    # -- outcomes --------------------------------------------------------------------

    def _identity_headers(
        self, policy: CompiledPolicy, identity: Identity, decision_id: str
    ) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
        """The upstream headers an identity gets, and the identity headers to remove.

        Everything but the decision id depends only on the identity, and the JWT and
        API key providers hand out the same Identity object for the same credential,
        so that part is built once per identity (a bounded table per policy).
        """
        cache = policy.identity_headers_cache
        entry = cache.get(id(identity))
        if entry is None or entry[0] is not identity:
            entry = (identity, *identity_header_parts(policy, identity))
            if len(cache) >= IDENTITY_HEADER_CACHE_SIZE:
                cache.clear()  # eviction: start over; refilling costs ~1 µs an identity
            cache[id(identity)] = entry
        _, before, after, remove = entry
        return (*before, (policy.decision_id_header, decision_id), *after), remove

    def _allow(
        self,
        policy: CompiledPolicy,
        decision_id: str,
        ctx: Context,
        *,
        status: int = 200,
        reason: str = R.ALLOWED.code,
        monitored: bool = False,
    ) -> Decision:
        """Let the request through; ``monitored`` marks a deny that monitor mode allowed."""
        identity, route = ctx.identity, ctx.route
        set_headers, remove = self._identity_headers(policy, identity, decision_id)
        if ctx.upstream_headers:
            # a header a stage sets is not also removed (Envoy removes after setting)
            stage_set = {name for name, _ in ctx.upstream_headers}
            remove = tuple(h for h in remove if h not in stage_set)
        strip = ctx.plan.strip if ctx.plan is not None else ()
        if ctx.remove_upstream:
            strip += ctx.remove_upstream
        return Decision(
            allowed=True,
            status=status,
            reason=reason,
            decision_id=decision_id,
            request_id=ctx.request.request_id,
            route=route.name if route is not None else "",
            path=ctx.path,
            identity=identity,
            upstream_headers=set_headers + tuple(ctx.upstream_headers),
            remove_upstream_headers=remove + strip,
            response_headers=tuple(ctx.response_headers),
            metadata=self._metadata(policy, decision_id, identity, reason),
            policy_version=policy.version,
            monitored=monitored,
        )

    def _deny(
        self, policy: CompiledPolicy, decision_id: str, exc: AuthzError, ctx: Context
    ) -> Decision:
        request, route, identity, path = ctx.request, ctx.route, ctx.identity, ctx.path
        reason = exc.reason
        plan = ctx.plan
        if not exc.monitorable:
            monitor = False  # a failure is never let through, whatever the mode
        elif plan is not None:
            monitor = plan.monitor
        elif exc.undeclared:
            monitor = policy.undeclared_monitor
            if not ctx.explain:
                self._count_undeclared(request.method, path)
        else:
            monitor = policy.global_monitor and exc.monitorable_unrouted
        if monitor:
            return self._allow(
                policy, decision_id, ctx, status=exc.status, reason=reason, monitored=True
            )
        headers: list[tuple[str, str]] = [("content-type", "application/json")]
        headers.extend(exc.challenge(policy.realm))
        headers.extend(exc.headers)
        headers.extend(ctx.response_headers)
        body = json.dumps(
            {"error": reason, "request_id": request.request_id, **dict(exc.body_fields)}
        )
        return Decision(
            allowed=False,
            status=exc.status,
            reason=reason,
            decision_id=decision_id,
            request_id=request.request_id,
            route=route.name if route is not None else "",
            path=path,
            identity=identity,
            response_headers=tuple(headers),
            body=body,
            metadata=self._metadata(policy, decision_id, identity, reason),
            policy_version=policy.version,
        )

    @staticmethod
    def _metadata(
        policy: CompiledPolicy, decision_id: str, identity: Identity, reason: str
    ) -> Mapping[str, str]:
        return {
            "decision_id": decision_id,
            "subject": identity.subject,
            "reason": reason,
            "policy_version": policy.version,
        }

    def _count_undeclared(self, method: str, path: str) -> None:
        self._undeclared_total.inc()
        key = (method, path_shape(path) if path else "<invalid>")
        counts = self.undeclared
        if key in counts:
            counts[key] += 1
        elif len(counts) < MAX_UNDECLARED_SHAPES:
            counts[key] = 1
        else:
            other = ("*", "<other>")
            counts[other] = counts.get(other, 0) + 1

    def _record(
        self,
        request: Request,
        decision: Decision,
        started: float,
        policy: CompiledPolicy,
        ctx: Context,
    ) -> Decision:
        """Write the decision's record; returns the decision the caller gets: a deny
        (decision_log_unavailable) instead of an allow that cannot be recorded when the
        policy's decision log fails closed. The check is a flag and a length compare."""
        sink = self._sink
        if decision.allowed and policy.log_fails_closed and not sink.ready():
            decision = self._deny(policy, decision.decision_id, DecisionLogUnavailable(), ctx)
        audit = policy.audit
        if audit is not None and not audit.ready() and decision.allowed:
            decision = self._deny(policy, decision.decision_id, AuditUnavailable(), ctx)
        if decision.monitored:
            outcome = "monitor"
            self._count_monitor()
        elif decision.allowed:
            outcome = "allow"
            self._count_allow()
        else:
            outcome = "deny"
            self._count_deny()
        reason = decision.reason
        route_label = decision.route or (UNDECLARED if reason == "undeclared_route" else UNROUTED)
        key = (route_label, outcome, reason)
        count = self._by_reason.get(key)
        if count is None:
            count = self._decisions.labels(*key).inc
            if len(self._by_reason) < MAX_DECISION_SERIES:
                self._by_reason[key] = count
        count()
        route = ctx.route
        data_class = route.data_class if route is not None else ""
        self._by_class.get((outcome, data_class), no_count)()
        identity = decision.identity
        traceparent = request.headers.get("traceparent")  # one lookup; parsed if present
        trace, trace_id = trace_context(traceparent) if traceparent else _NO_TRACE
        record = make_record(
            (
                self._clock(),
                request.request_id,
                decision.decision_id,
                decision.route,
                request.method,
                decision.path or _log_path(request.path),
                identity.kind,
                identity.subject,
                identity.issuer,
                outcome,
                decision.status,
                decision.reason,
                decision.policy_version,
                (time.perf_counter() - started) * 1000,
                request.source_address,
                trace,
                trace_id,
                request,
                identity,
                data_class,
            )
        )
        ctx.record = record
        try:
            sink.emit(record)
        except Exception:  # a broken sink must not break decisions
            log.exception("decision sink failed")
        if audit is not None:
            audit.on_decision(record)  # never raises: a tuple appended to a deque
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # a broken listener must not break decisions
                log.exception("decision listener failed")
        return decision


_NO_TRACE = ("", "")


async def _marked(stage: Stage, step: Any, ctx: Context, marks: list[StageMark]) -> None:
    """Run one step of a traced decision, noting when and how it ended."""
    started = time.perf_counter()
    try:
        pending = step(ctx)
        if pending is not None:
            await pending
    except AuthzError as exc:
        took = (time.perf_counter() - started) * 1000
        marks.append(StageMark(stage.name, stage.phase, started, took, "deny", exc.reason))
        raise
    except Exception:
        took = (time.perf_counter() - started) * 1000
        marks.append(StageMark(stage.name, stage.phase, started, took, "error"))
        raise
    took = (time.perf_counter() - started) * 1000
    marks.append(StageMark(stage.name, stage.phase, started, took, "pass"))


async def _timed(stage: Stage, ctx: Context, ran: dict[tuple[str, str], Step]) -> None:
    """Run one stage for explain, noting its outcome, element and duration."""
    key = (stage.name, stage.phase)
    step = step_of(stage)  # what check calls, so explain runs the same code
    started = time.perf_counter()
    try:
        pending = step(ctx)
        if pending is not None:
            await pending
    except AuthzError as exc:
        took = (time.perf_counter() - started) * 1000
        element = exc.element or stage.element(ctx)
        ran[key] = Step(stage.name, stage.phase, "deny", exc.reason, element, took)
        raise
    took = (time.perf_counter() - started) * 1000
    ran[key] = Step(stage.name, stage.phase, "pass", "", stage.element(ctx), took)


def _log_path(raw: str) -> str:
    """A raw (unreadable) path for the log: no query or fragment (either may hold a
    token), bounded."""
    path = raw.split("?", 1)[0].split("#", 1)[0][:256]
    return path.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")
