"""``authz serve --access-log-grpc``: the service's own access-log port takes Envoy-shaped
streams (counted through the control plane), and whatever happens to the feed (garbage,
a stream cut mid-way, a flood, no feed at all) the decisions are the same."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.control.client import connect
from authz.demo.stack import free_port
from authz.transport.envoy_als import (
    ACCESS_LOG_SERVICE,
    StreamAccessLogsMessage,
    build_http_entry,
)
from authz.transport.envoy_grpc import build_check_request
from authz.v1 import admin_pb2
from tests.support import ServiceProcess, wait_for

KEY = "feed-key-0123456789abcdef"
POLICY = f"""\
providers:
  keys:
    type: api_key
    keys:
      - {{id: k, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, owner: o, scopes: [r], expires: "2999-01-01"}}
routes:
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys], scopes: [r]}}
"""
METHOD = f"/{ACCESS_LOG_SERVICE}/StreamAccessLogs"


@pytest.fixture()
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def message(ids: list[str]) -> bytes:
    m = StreamAccessLogsMessage()
    for d in ids:
        m.http_logs.log_entry.append(build_http_entry(path=f"/v1/orders/{d}", decision_id=d))
    m.http_logs.log_entry.append(build_http_entry(path="/healthz", route="health"))
    return m.SerializeToString()


def stream(address: str, messages: Iterator[bytes] | list[bytes]) -> None:
    with grpc.insecure_channel(address) as channel:
        channel.stream_unary(METHOD, request_serializer=lambda b: b)(iter(messages), timeout=10)


def decide(address: str, key: str | None = KEY) -> tuple[bool, int]:
    headers = {"x-api-key": key} if key else {}
    with grpc.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        reply = stub.Check(
            build_check_request(method="GET", path="/v1/orders/1", host="h", headers=headers),
            timeout=5,
        )
    return reply.HasField("ok_response"), reply.denied_response.status.code


def feed_counts(svc: ServiceProcess) -> dict[str, float]:
    token = svc.runtime / f"control-{svc.control.rsplit(':', 1)[1]}.token"
    with connect(svc.control, token_file=str(token)) as admin:
        reply = admin.call("GetCounters", admin_pb2.GetCountersRequest(prefix="authz_feed"))
    return {f"{s.name}:{s.labels[0].value}" if s.labels else s.name: s.value for s in reply.series}


def test_the_service_takes_envoys_stream_and_counts_it(
    policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    als = f"127.0.0.1:{free_port()}"
    svc = start_service(policy, "--access-log-grpc", als)
    stream(als, [message(["a", "b"]), message(["c"])])
    wait_for(lambda: feed_counts(svc).get("authz_feed_entries_total:joined") == 3)
    counts = feed_counts(svc)
    assert counts["authz_feed_entries_total:public"] == 2
    assert counts.get("authz_feed_entries_total:dropped", 0) == 0


def test_decisions_do_not_depend_on_the_feed(
    policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    als = f"127.0.0.1:{free_port()}"
    svc = start_service(policy, "--access-log-grpc", als)
    expected = [(True, 0), (False, 401)]
    assert [decide(svc.address), decide(svc.address, None)] == expected  # no stream yet

    # garbage on the stream, then a stream cut mid-way by the client
    stream(als, [message(["x"]), b"\x0a\xff\xff\xff\xff", message(["y"])])
    assert [decide(svc.address), decide(svc.address, None)] == expected

    def cut() -> Iterator[bytes]:
        yield message(["z"])
        raise RuntimeError("Envoy went away")

    with pytest.raises(grpc.RpcError):
        stream(als, cut())
    # a flood: many large batches at once
    stream(als, [message([f"f{i}-{j}" for j in range(200)]) for i in range(20)])
    assert [decide(svc.address), decide(svc.address, None)] == expected
    wait_for(lambda: feed_counts(svc).get("authz_feed_invalid_messages_total", 0) == 1)
    assert svc.proc.poll() is None


def test_a_service_without_the_feed_decides_the_same(
    policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    svc = start_service(policy)
    assert [decide(svc.address), decide(svc.address, None)] == [(True, 0), (False, 401)]
    assert not any(k.startswith("authz_feed_entries") for k in feed_counts(svc))


def test_an_access_log_port_in_use_refuses_to_start(policy: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "authz", "serve", str(policy), "--grpc", f"127.0.0.1:{free_port()}",
             "--control", "off", "--access-log-grpc", f"127.0.0.1:{port}", "--decision-log", "off"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode != 0
    assert "access log" in proc.stderr


def test_a_bad_address_is_a_usage_error(policy: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "authz", "serve", str(policy), "--access-log-grpc", "nowhere"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--access-log-grpc" in proc.stderr


def test_with_workers_the_access_log_port_is_served(
    policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    als = f"127.0.0.1:{free_port()}"
    svc = start_service(policy, "--workers", "2", "--access-log-grpc", als)
    for i in range(8):  # new connections, spread over the workers by SO_REUSEPORT
        stream(als, [message([f"w{i}"])])
    # the control plane merges the workers' counters
    wait_for(lambda: feed_counts(svc).get("authz_feed_entries_total:joined") == 8)
    assert decide(svc.address) == (True, 0)
