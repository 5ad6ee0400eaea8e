"""``authz serve --tracing`` as a process, exporting to a real OTLP gRPC receiver:
the decision spans arrive, children of the propagated context, on both transports."""

from __future__ import annotations

import hashlib
import http.client
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.demo.stack import free_port
from authz.transport.envoy_grpc import build_check_request
from tests.support import ServiceProcess, wait_for
from tests.telemetry.otlp_receiver import OtlpReceiver

KEY = "trace-key-0123456789abcdef"
POLICY = f"""\
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {{id: k, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, owner: team,
          scopes: [orders:read], expires: "2999-01-01"}}
routes:
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys],
      scopes: [orders:read]}}
  - {{name: admin, path: /v1/admin, methods: [GET], providers: [keys], scopes: [admin]}}
"""
GRPC_TRACE, GRPC_PARENT = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
HTTP_TRACE, HTTP_PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def _http_check(port: int, path: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/check" + path, headers={"host": "api.local", **headers})
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def _http_up(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def test_spans_reach_the_receiver_with_their_parents_on_both_transports(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    http_port = free_port()
    with OtlpReceiver() as rx:
        svc = ServiceProcess(
            policy, tmp_path, "--http", f"127.0.0.1:{http_port}",
            "--otlp-endpoint", rx.endpoint, "--tracing", "--service-name", "authz-test",
        )  # fmt: skip
        try:
            svc.wait_serving()
            wait_for(lambda: _http_up(http_port))
            traceparent = f"00-{GRPC_TRACE}-{GRPC_PARENT}-01"
            with grpc.insecure_channel(svc.address) as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                reply = stub.Check(
                    build_check_request(
                        method="GET", path="/v1/admin", host="api.local",
                        headers={"x-api-key": KEY, "traceparent": traceparent},
                    ),
                    timeout=10,
                )  # fmt: skip
            assert reply.denied_response.status.code == 403
            b3 = f"{HTTP_TRACE}-{HTTP_PARENT}-1"
            assert _http_check(http_port, "/v1/orders/7", {"x-api-key": KEY, "b3": b3}) == 200
            spans = rx.wait_spans(lambda s: len(s) >= 2)
        finally:
            assert svc.stop() == 0
    by_trace = {s.trace_id: s for s in spans}
    denied, allowed = by_trace[GRPC_TRACE], by_trace[HTTP_TRACE]
    assert denied.service == allowed.service == "authz-test"
    assert denied.name == "authz.check" and denied.parent_span_id == GRPC_PARENT
    assert denied.attributes["authz.decision"] == "deny"
    assert denied.attributes["authz.reason"] == "insufficient_scope"
    assert denied.attributes["authz.identity_type"] == "api_key"
    assert denied.attributes["http.request.method"] == "GET"
    assert denied.attributes["http.route"] == "/v1/admin"
    assert denied.events[-1][0] == "stage authorize"
    assert denied.events[-1][1]["authz.stage.outcome"] == "deny"
    assert allowed.parent_span_id == HTTP_PARENT
    assert allowed.attributes["authz.decision"] == "allow"
    assert allowed.attributes["http.route"] == "/v1/orders/{id}"
    assert KEY not in repr([s.attributes for s in spans] + [s.events for s in spans])


def test_decision_records_arrive_as_otlp_logs_with_trace_and_span_ids(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with OtlpReceiver() as rx:
        svc = ServiceProcess(
            policy, tmp_path, "--otlp-endpoint", rx.endpoint, "--otlp-logs", "--tracing",
        )  # fmt: skip
        try:
            svc.wait_serving()
            with grpc.insecure_channel(svc.address) as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                for path, headers in (
                    ("/v1/admin", {"x-api-key": KEY, "traceparent": f"00-{GRPC_TRACE}-{GRPC_PARENT}-01"}),
                    ("/v1/orders/7", {"x-api-key": KEY}),
                ):  # fmt: skip
                    stub.Check(
                        build_check_request(method="GET", path=path, host="api.local", headers=headers),
                        timeout=10,
                    )  # fmt: skip
            wait_for(lambda: len(rx.logs) >= 2, timeout=20)
            spans = rx.wait_spans(lambda s: len(s) >= 2)
        finally:
            assert svc.stop() == 0
    by_path = {log["body"]["path"] if isinstance(log["body"], dict) else "": log for log in rx.logs}
    denied, allowed = by_path["/v1/admin"], by_path["/v1/orders/7"]
    assert denied["service"] == "authz"
    assert denied["trace_id"] == GRPC_TRACE and denied["span_id"] == GRPC_PARENT
    assert denied["attributes"]["authz.reason"] == "insufficient_scope"
    assert denied["body"]["reason"] == "insufficient_scope" and denied["body"]["route"] == "admin"
    (span,) = [s for s in spans if s.trace_id == GRPC_TRACE]
    assert span.parent_span_id == denied["span_id"]  # the log sits beside the decision span
    assert allowed["trace_id"] == "" and allowed["body"]["decision"] == "allow"
    assert KEY not in repr(rx.logs)
