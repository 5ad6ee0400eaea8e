"""End to end: one trace of a denied request through the real Envoy.

``authz envoy-config --tracing`` makes Envoy send its spans (OpenTelemetry tracer,
OTLP gRPC) to the test's receiver, and ``authz serve --tracing`` sends its decision
spans to the same one: the receiver holds Envoy's span and authz's under one trace
id, authz's span a child of a span of Envoy's, on both transports.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from tests.telemetry.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.e2e

API_KEY = "trace-key-0123456789abcdef"
POLICY = f"""\
mode: enforce
undeclared_routes: deny
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {{id: k, sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}, owner: t,
          scopes: [r], expires: "2999-01-01"}}
routes:
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys], scopes: [r]}}
  - {{name: admin, path: /v1/admin, methods: [GET], providers: [keys], scopes: [admin]}}
"""


def _joined(spans: list[ReceivedSpan]) -> bool:
    """The whole chain has arrived: an authz span, its parent (Envoy's ext_authz
    client span) and that one's parent (Envoy's root). Envoy exports in batches: the
    client span and the root can come in different ones."""
    envoy = {s.span_id: s for s in spans if s.service == "envoy"}
    for span in spans:
        if span.service == "authz":
            caller = envoy.get(span.parent_span_id)
            if caller is not None and caller.parent_span_id in envoy:
                return True
    return False


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_denied_request_is_one_trace_of_envoy_and_authz(tmp_path: Path, transport: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with OtlpReceiver() as rx, LocalStack(
        policy, tmp_path / "state", transport=transport, tracing_port=rx.port,
        extra_serve_args=("--otlp-endpoint", rx.endpoint, "--tracing"),
    ) as stack:  # fmt: skip
        status, _, _ = send(
            "GET", f"{stack.base_url}/v1/admin", {"host": "api.local", "x-api-key": API_KEY}
        )
        assert status == 403
        spans = rx.wait_spans(_joined, timeout=30)
    envoy_ids = {s.span_id for s in spans if s.service == "envoy"}
    (authz,) = [s for s in spans if s.service == "authz" and s.parent_span_id in envoy_ids]
    assert authz.attributes["authz.decision"] == "deny"
    assert authz.attributes["authz.reason"] == "insufficient_scope"
    trace = [s for s in spans if s.trace_id == authz.trace_id]
    envoy = [s for s in trace if s.service == "envoy"]
    assert envoy, spans
    # authz's parent is Envoy's ext_authz client span ("async ... egress"), itself a
    # child of Envoy's span of the request ("ingress", the root)
    (caller,) = [s for s in envoy if s.span_id == authz.parent_span_id]
    assert "egress" in caller.name, trace
    (root,) = [s for s in envoy if s.span_id == caller.parent_span_id]
    assert root.name == "ingress" and root.parent_span_id == "", trace
    assert API_KEY not in repr([s.attributes for s in spans])
