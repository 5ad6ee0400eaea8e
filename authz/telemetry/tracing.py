"""Decision spans: ``authz serve --tracing`` (OpenTelemetry, OTLP gRPC).

Each sampled decision becomes one SERVER span named ``authz.check``, child of the
trace context Envoy propagated (W3C ``traceparent``; B3, single ``b3`` or the
``x-b3-*`` headers, when there is no ``traceparent``), with one event per stage
that ran (the stage's name, phase, outcome, its reason when it denied, and its
duration, as :mod:`authz.explain` shows them) and attributes from the semantic
conventions (``http.request.method``, ``http.route``) plus ``authz.decision``,
``authz.reason``, ``authz.identity_type``, ``authz.route``, ``authz.decision_id``
and ``authz.policy_version``. Never a credential, a subject or a path that is not
a route template.

Cheap by construction:

- the sampling decision comes first (:meth:`DecisionTracer.sample`: a header
  lookup and, for a new trace, one ``random()``); an unsampled decision runs the
  engine's ordinary loop and creates no span object at all;
- a sampled decision is timed stage by stage (two ``perf_counter`` calls a stage)
  and its span is built *after* the decision, from the decision record, with
  explicit start and end times: nothing wraps the stages live;
- the span goes to the SDK's ``BatchSpanProcessor`` (a deque append); export runs
  in the processor's thread.

Sampling: ``--trace-sampling RATIO`` is the head sampling ratio of new traces; with
a parent (parent-based, the default) the parent's sampled flag decides, and with
``--no-trace-parent-based`` the ratio applies to every decision (the span is still
the parent's child). The SDK's sampler is ALWAYS_ON: this module has decided.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from authz.record import DecisionRecord

#: what a span is named (one per decision)
SPAN_NAME = "authz.check"
#: the instrumentation scope
SCOPE = "authz"


class Parent(NamedTuple):
    """A propagated trace context: ids as integers, and the parent's sampled flag."""

    trace_id: int
    span_id: int
    sampled: bool


#: "no parent, sampled" (a new trace the ratio picked)
ROOT = Parent(0, 0, True)


class StageMark(NamedTuple):
    """One stage of a traced decision: when it started (perf_counter s), how long it
    took (ms), and how it ended (pass | deny | error) with the reason of a deny."""

    name: str
    phase: str
    started: float
    took_ms: float
    outcome: str
    reason: str = ""


def _hex(text: str, size: int) -> int:
    if len(text) != size:
        return 0
    try:
        return int(text, 16)
    except ValueError:
        return 0


def parse_traceparent(value: str) -> Parent | None:
    """A W3C ``traceparent`` (version 00): None unless valid (ids not all zero)."""
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff":
        return None
    trace_id, span_id, flags = _hex(parts[1], 32), _hex(parts[2], 16), _hex(parts[3], 2)
    if not trace_id or not span_id or len(parts[3]) != 2:
        return None
    return Parent(trace_id, span_id, bool(flags & 1))


def parse_b3(headers: Mapping[str, str]) -> Parent | None:
    """B3 (single ``b3: trace-span[-sampled]`` or multi ``x-b3-*``): None unless valid.
    A 64-bit trace id is widened to 128 bits (zeros on the left), as B3 says."""
    single = headers.get("b3")
    if single:
        parts = single.strip().split("-")
        if len(parts) < 2:
            return None
        trace, span = parts[0], parts[1]
        flag = parts[2] if len(parts) > 2 else "1"
    else:
        trace, span = headers.get("x-b3-traceid", ""), headers.get("x-b3-spanid", "")
        if not trace or not span:
            return None
        flag = "1" if headers.get("x-b3-flags") == "1" else headers.get("x-b3-sampled", "1")
    trace_id = _hex(trace.lower(), len(trace)) if len(trace) in (16, 32) else 0
    span_id = _hex(span.lower(), 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, flag in ("1", "d", "true"))


def parent_of(headers: Mapping[str, str]) -> Parent | None:
    """The propagated context of a request's headers (W3C first, then B3)."""
    value = headers.get("traceparent")
    if value:
        parent = parse_traceparent(value)
        if parent is not None:
            return parent
    if "b3" in headers or "x-b3-traceid" in headers:
        return parse_b3(headers)
    return None


class DecisionTracer:
    """Decides which decisions are traced and turns a traced one into a span.

    ``tracer`` is an OpenTelemetry ``Tracer`` (the service's, over a batch processor
    and the OTLP exporter: :func:`build_provider`; tests pass one over an in-memory
    exporter).
    """

    def __init__(
        self,
        tracer: Any,
        *,
        ratio: float = 1.0,
        parent_based: bool = True,
        rand: Any = random.random,
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self._tracer = tracer
        self.ratio = ratio
        self.parent_based = parent_based
        self._rand = rand
        self._trace = trace
        self._span_context = SpanContext
        self._sampled_flags = TraceFlags(TraceFlags.SAMPLED)
        self._kind = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)
        self._ok = Status(StatusCode.UNSET)

    def sample(self, headers: Mapping[str, str]) -> Parent | None:
        """The parent of this decision's span when it is to be traced, else None
        (then no span object is made). ``ROOT``: traced, no parent."""
        parent = parent_of(headers)
        if parent is not None and self.parent_based:
            return parent if parent.sampled else None
        if self.ratio >= 1.0 or self._rand() < self.ratio:
            return parent or ROOT
        return None

    def export(
        self,
        record: DecisionRecord,
        parent: Parent,
        started_ns: int,
        marks: Sequence[StageMark],
        started_perf: float,
        template: str = "",
    ) -> None:
        """Build and end the span of one decision (times from the record;
        ``template``: the matched route's path template, ``http.route``)."""
        trace = self._trace
        if parent.trace_id:
            remote = self._span_context(parent.trace_id, parent.span_id, True, self._sampled_flags)
            context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        else:
            context = None
        end_ns = started_ns + int(record.latency_ms * 1_000_000)
        attributes: dict[str, Any] = {
            "http.request.method": record.method,
            "authz.decision": record.decision,
            "authz.reason": record.reason,
            "authz.identity_type": record.identity_type,
            "authz.status_code": record.status,
            "authz.decision_id": record.decision_id,
            "authz.policy_version": record.policy_version,
        }
        if record.route:
            attributes["authz.route"] = record.route
        if template:
            attributes["http.route"] = template
        span = self._tracer.start_span(
            SPAN_NAME,
            context=context,
            kind=self._kind,
            attributes=attributes,
            start_time=started_ns,
        )
        for mark in marks:
            event: dict[str, Any] = {
                "authz.stage.phase": mark.phase,
                "authz.stage.outcome": mark.outcome,
                "authz.stage.duration_ms": mark.took_ms,
            }
            if mark.reason:
                event["authz.reason"] = mark.reason
            stamp = started_ns + int((mark.started - started_perf) * 1e9)
            span.add_event(f"stage {mark.name}", event, timestamp=stamp)
        span.set_status(self._error if record.decision == "deny" else self._ok)
        span.end(end_time=end_ns)


def now_ns() -> int:
    return time.time_ns()


def build_provider(endpoint: str, service_name: str) -> Any:
    """A ``TracerProvider`` (sampler ALWAYS_ON: :class:`DecisionTracer` samples) that
    exports through a ``BatchSpanProcessor`` to the OTLP gRPC collector at
    ``endpoint`` (``http://HOST:PORT`` plaintext, ``https://`` TLS)."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # xds-protos ships an older copy of the same modules
        raise ImportError(
            f"the OTLP exporter does not load ({exc}): xds-protos installed its own, older "
            "opentelemetry/proto modules over opentelemetry-proto's; run "
            "`pip install --force-reinstall --no-deps opentelemetry-proto`"
        ) from exc
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    provider = TracerProvider(
        sampler=ALWAYS_ON, resource=Resource.create({"service.name": service_name})
    )
    insecure = endpoint.startswith("http://")
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
