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
- the span is a finished ``ReadableSpan`` handed to the SDK's ``BatchSpanProcessor``
  (a deque append); encoding and export run in the processor's thread.

Sampling: ``--trace-sampling RATIO`` is the head sampling ratio of new traces; with
a parent (parent-based, the default) the parent's sampled flag decides, and with
``--no-trace-parent-based`` the ratio applies to every decision (the span is still
the parent's child). No SDK sampler or tracer is involved: this module decides.

The stages in the span are the ones that ran (the explain trace also lists those
that abstained or were skipped: :meth:`authz.engine.PolicyEngine.explain`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from authz.record import DecisionRecord

#: what a span is named (one per decision)
SPAN_NAME = "authz.check"
#: the instrumentation scope
SCOPE = "authz"
#: spans waiting for export at most (the SDK's default is 2048: ~0.4 s of decisions at
#: 100% sampling here); past it the batch processor drops a span and logs "Queue full"
MAX_QUEUE = 8192
#: spans per export request
BATCH = 512


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

    ``processor`` is an OpenTelemetry SDK span processor (the service's: a
    ``BatchSpanProcessor`` over the OTLP exporter, :func:`build_processor`; tests pass
    a ``SimpleSpanProcessor`` over the in-memory exporter). The span is a finished
    ``ReadableSpan`` built from the record and handed to ``processor.on_end``: no
    live span, no context switch, and no attribute validation (the attributes are
    this module's own strings and numbers), which is most of what the SDK's
    ``start_span``/``add_event``/``end`` cost (~100 µs a span here, against ~15).
    """

    def __init__(
        self,
        processor: Any,
        *,
        ratio: float = 1.0,
        parent_based: bool = True,
        service_name: str = "authz",
        rand: Any = random.random,
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self.processor = processor
        self.ratio = ratio
        self.parent_based = parent_based
        self._rand = rand
        self._bits = random.getrandbits
        self._readable = ReadableSpan
        self._event = _event_class()
        self._span_context = SpanContext
        self._flags = TraceFlags(TraceFlags.SAMPLED)
        self._kind = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)
        self._ok = Status(StatusCode.UNSET)
        self._resource = Resource.create({"service.name": service_name})
        self._scope = InstrumentationScope(SCOPE)

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
        """Build the finished span of one decision (times from the record;
        ``template``: the matched route's path template, ``http.route``) and hand it
        to the processor."""
        context_of = self._span_context
        if parent.trace_id:
            trace_id = parent.trace_id
            remote = context_of(trace_id, parent.span_id, True, self._flags)
        else:
            trace_id = self._bits(128) or 1
            remote = None
        context = context_of(trace_id, self._bits(64) or 1, False, self._flags)
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
        event = self._event
        events = []
        for mark in marks:
            fields: dict[str, Any] = {
                "authz.stage.phase": mark.phase,
                "authz.stage.outcome": mark.outcome,
                "authz.stage.duration_ms": mark.took_ms,
            }
            if mark.reason:
                fields["authz.reason"] = mark.reason
            stamp = started_ns + int((mark.started - started_perf) * 1e9)
            events.append(event(f"stage {mark.name}", fields, stamp))
        span = self._readable(
            SPAN_NAME,
            context=context,
            parent=remote,
            resource=self._resource,
            attributes=attributes,
            events=events,
            kind=self._kind,
            status=self._error if record.decision == "deny" else self._ok,
            start_time=started_ns,
            end_time=started_ns + int(record.latency_ms * 1_000_000),
            instrumentation_scope=self._scope,
        )
        self.processor.on_end(span)


def _event_class() -> Any:
    """A span event whose attributes are the dict given (the SDK's ``Event`` copies
    and validates them into ``BoundedAttributes``: ours are already plain values)."""
    from opentelemetry.sdk.trace import EventBase

    class StageEvent(EventBase):
        __slots__ = ("_attributes",)

        def __init__(self, name: str, attributes: dict[str, Any], timestamp: int) -> None:
            super().__init__(name, timestamp)
            self._attributes = attributes

        @property
        def attributes(self) -> dict[str, Any]:
            return self._attributes

        @property
        def dropped_attributes(self) -> int:
            return 0

    return StageEvent


def build_processor(endpoint: str) -> Any:
    """A ``BatchSpanProcessor`` exporting to the OTLP gRPC collector at ``endpoint``
    (``http://HOST:PORT`` plaintext, ``https://`` TLS)."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # xds-protos ships an older copy of the same modules
        raise ImportError(
            f"the OTLP exporter does not load ({exc}): xds-protos installed its own, older "
            "opentelemetry/proto modules over opentelemetry-proto's; run "
            "`pip install --force-reinstall --no-deps opentelemetry-proto`"
        ) from exc
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    return BatchSpanProcessor(exporter, max_queue_size=MAX_QUEUE, max_export_batch_size=BATCH)
