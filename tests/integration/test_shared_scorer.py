"""``authz serve --workers N`` with ``detection.scorer: process``: one scoring process
for the replica, so every worker enforces what any worker's traffic caused, and the
access-log feed is joined to decisions whichever worker made them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.control.client import connect
from authz.demo.stack import free_port
from authz.transport.envoy_als import ACCESS_LOG_SERVICE, StreamAccessLogsMessage, build_http_entry
from authz.transport.envoy_grpc import build_check_request
from authz.v1 import admin_pb2
from tests.support import ServiceProcess, wait_for

KEY = "shared-key-0123456789abcdef"
POLICY = f"""\
providers:
  keys:
    type: api_key
    keys:
      - {{id: k, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, owner: o, scopes: [r], expires: "2999-01-01"}}
routes:
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys], scopes: [r]}}
detection:
  mode: enforce
  interval: 50ms
  detectors:
    honeypot: {{response: block, target: address, ttl: 1h, identity: false, paths: ["/.env"]}}
"""


@pytest.fixture()
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def check(address: str, path: str, source: str) -> tuple[int, str]:
    """One decision on a new connection (SO_REUSEPORT spreads them over the workers):
    the status (0: allowed) and the decision id."""
    with grpc.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        reply = stub.Check(
            build_check_request(method="GET", path=path, host="h", headers={"x-api-key": KEY},
                                source_address=source),
            timeout=5,
        )  # fmt: skip
    decision_id = reply.dynamic_metadata.fields["decision_id"].string_value
    return (0 if reply.HasField("ok_response") else reply.denied_response.status.code), decision_id


def counters(svc: ServiceProcess, prefix: str) -> dict[str, float]:
    token = svc.runtime / f"control-{svc.control.rsplit(':', 1)[1]}.token"
    with connect(svc.control, token_file=str(token)) as admin:
        reply = admin.call("GetCounters", admin_pb2.GetCountersRequest(prefix=prefix))
    return {":".join([s.name, *(label.value for label in s.labels)]): s.value for s in reply.series}


def test_a_block_caused_in_one_worker_holds_in_every_worker(
    policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    svc = start_service(policy, "--workers", "2")
    assert check(svc.address, "/v1/orders/1", "10.3.3.3")[0] == 0
    assert check(svc.address, "/.env", "10.3.3.3")[0] == 404  # the honeypot, in one worker
    wait_for(lambda: check(svc.address, "/v1/orders/1", "10.3.3.3")[0] == 403)
    # every new connection, whichever worker the kernel gives it, refuses that address
    statuses = [check(svc.address, "/v1/orders/1", "10.3.3.3")[0] for _ in range(24)]
    assert statuses == [403] * 24
    assert check(svc.address, "/v1/orders/1", "10.3.3.4")[0] == 0  # only that address
    # counted once for the replica (the control plane sums the workers)
    found = counters(svc, "authz_detect_actions")
    assert found == {"authz_detect_actions_total:honeypot:block:enforce": 1}


def test_the_feed_is_joined_to_decisions_of_any_worker(
    policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    als = f"127.0.0.1:{free_port()}"
    svc = start_service(policy, "--workers", "2", "--access-log-grpc", als)
    method = f"/{ACCESS_LOG_SERVICE}/StreamAccessLogs"

    def log(path: str, decision_id: str = "") -> None:  # a new stream: any worker
        message = StreamAccessLogsMessage()
        entry = build_http_entry(path=path, decision_id=decision_id, status=404, route="r")
        message.http_logs.log_entry.append(entry)
        with grpc.insecure_channel(als) as channel:
            send = channel.stream_unary(method, request_serializer=lambda b: b)
            send(iter([message.SerializeToString()]), timeout=10)

    def responses() -> float:
        found = counters(svc, "authz_detect_observations")
        return found.get("authz_detect_observations_total:response", 0)

    log("/healthz")  # the feed is live (until then decisions are not kept for joining)
    wait_for(lambda: responses() == 1)
    ids = [check(svc.address, f"/v1/orders/{i}", "10.5.5.5")[1] for i in range(16)]
    for i, decision_id in enumerate(ids):
        log(f"/v1/orders/{i}", decision_id)
    wait_for(lambda: responses() == 17)
    assert counters(svc, "authz_detect_unjoined").get("authz_detect_unjoined_total", 0) == 0
