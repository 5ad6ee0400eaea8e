"""Decision spans (``--tracing``), against the SDK's in-memory exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy
from authz.telemetry.tracing import DecisionTracer, parent_of, parse_b3, parse_traceparent

SECRET_SHA = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"  # "secret"
POLICY = f"""\
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {{id: demo, sha256: {SECRET_SHA}, owner: svc-demo, expires: 2099-01-01,
          scopes: [orders:read]}}
routes:
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys],
      scopes: [orders:read]}}
  - {{name: admin, path: /v1/admin, methods: [GET], providers: [keys], scopes: [admin]}}
"""
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def build(tmp_path: Path, exporter: InMemorySpanExporter, **kw: Any) -> PolicyEngine:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    engine = PolicyEngine(CompiledPolicy(load_policy(path)))
    engine.tracer = DecisionTracer(SimpleSpanProcessor(exporter), **kw)
    return engine


async def test_a_denied_decision_is_a_child_span_with_one_event_per_stage(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    engine = build(tmp_path, exporter)
    headers = {"x-api-key": "secret", "traceparent": f"00-{TRACE}-{PARENT}-01"}
    decision = await engine.check(Request(method="GET", path="/v1/admin", headers=headers))
    assert not decision.allowed
    (span,) = exporter.get_finished_spans()
    assert span.name == "authz.check" and span.kind is SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT
    attrs = dict(span.attributes or {})
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == "/v1/admin"
    assert attrs["authz.route"] == "admin"
    assert attrs["authz.decision"] == "deny"
    assert attrs["authz.reason"] == decision.reason == "insufficient_scope"
    assert attrs["authz.identity_type"] == "api_key"
    assert "secret" not in repr(attrs) and "svc-demo" not in repr(attrs)
    assert span.status.status_code is StatusCode.ERROR
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    names = [n for n, _ in events]
    assert names[:2] == ["stage canonical_path", "stage route"] or "stage route" in names
    assert names[-1] == "stage authorize"
    assert events[-1][1]["authz.stage.outcome"] == "deny"
    assert events[-1][1]["authz.reason"] == "insufficient_scope"
    assert all(a["authz.stage.outcome"] == "pass" for _, a in events[:-1])
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= span.events[0].timestamp <= span.end_time


async def test_an_allow_has_the_route_template_and_no_credential(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    engine = build(tmp_path, exporter)
    request = Request(method="GET", path="/v1/orders/42", headers={"x-api-key": "secret"})
    assert (await engine.check(request)).allowed
    (span,) = exporter.get_finished_spans()
    assert span.parent is None  # no traceparent: a new trace
    attrs = dict(span.attributes or {})
    assert attrs["http.route"] == "/v1/orders/{id}" and attrs["authz.decision"] == "allow"
    assert span.status.status_code is StatusCode.UNSET
    assert not any("42" in str(v) for k, v in attrs.items() if k != "authz.decision_id")


async def test_b3_is_a_parent_when_there_is_no_traceparent(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    engine = build(tmp_path, exporter)
    headers = {"x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-sampled": "1"}
    await engine.check(Request(method="GET", path="/v1/admin", headers=headers))
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT


async def test_parent_based_sampling_follows_the_parents_flag(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    engine = build(tmp_path, exporter, ratio=0.0)
    unsampled = {"traceparent": f"00-{TRACE}-{PARENT}-00"}
    sampled = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    for headers in ({}, unsampled, sampled):
        await engine.check(Request(method="GET", path="/v1/admin", headers=headers))
    assert len(exporter.get_finished_spans()) == 1  # only the sampled parent's


async def test_without_parent_based_the_ratio_decides_every_decision(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    draws = iter([0.9, 0.1, 0.9])
    engine = build(tmp_path, exporter, ratio=0.5, parent_based=False, rand=lambda: next(draws))
    sampled = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    unsampled = {"traceparent": f"00-{TRACE}-{PARENT}-00"}
    for headers in (sampled, unsampled, {}):
        await engine.check(Request(method="GET", path="/v1/admin", headers=headers))
    (span,) = exporter.get_finished_spans()  # the second draw, 0.1 < 0.5
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT


class Exploding:
    """A tracer that fails the test if anything asks it for a span."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"tracer.{name} called")


async def test_tracing_off_or_unsampled_never_touches_the_tracer(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    engine = PolicyEngine(CompiledPolicy(load_policy(path)))
    assert engine.tracer is None  # off: check() runs its ordinary loop
    headers = {"x-api-key": "secret", "traceparent": f"00-{TRACE}-{PARENT}-01"}
    assert (await engine.check(Request("GET", "/v1/orders/1", headers=headers))).allowed
    engine.tracer = DecisionTracer(Exploding(), ratio=0.0)
    unsampled = {"x-api-key": "secret", "traceparent": f"00-{TRACE}-{PARENT}-00"}
    assert (await engine.check(Request("GET", "/v1/orders/1", headers=unsampled))).allowed
    assert (await engine.check(Request("GET", "/v1/orders/1", headers=KEY_ONLY))).allowed


KEY_ONLY = {"x-api-key": "secret"}


def test_the_propagation_parsers() -> None:
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-01") == (int(TRACE, 16), int(PARENT, 16), True)
    assert parse_traceparent(f"00-{'0' * 32}-{PARENT}-01") is None
    assert parse_traceparent(f"00-{TRACE}-{'0' * 16}-01") is None
    assert parse_traceparent("00-xyz-abc-01") is None
    assert parse_b3({"b3": f"{TRACE}-{PARENT}-0"}) == (int(TRACE, 16), int(PARENT, 16), False)
    assert parse_b3({"b3": f"{TRACE[16:]}-{PARENT}"}) == (
        int(TRACE[16:], 16),
        int(PARENT, 16),
        True,
    )
    assert parse_b3({"b3": "0"}) is None
    assert parent_of({"traceparent": "bad", "b3": f"{TRACE}-{PARENT}-1"}) is not None
    assert parent_of({}) is None


def test_no_tracing_sdk_import_when_tracing_is_off() -> None:
    """(redis-py imports the OpenTelemetry API on its own; the SDK's tracer and the
    exporter are this module's, and only with --tracing.)"""
    import subprocess
    import sys

    code = (
        "import sys, authz.engine, authz.telemetry.runtime, authz.server\n"
        "bad = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace',"
        " 'opentelemetry.exporter'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
