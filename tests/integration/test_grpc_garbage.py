"""Garbage on the gRPC port: a real grpc.aio server, a real channel sending raw bytes.

A message that is not a CheckRequest is answered INVALID_ARGUMENT ("not a
CheckRequest"), counted, and logged as one line at most every 10 s, never with a
traceback; any message that does parse, however empty, gets a decision.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from authz.engine import CompiledPolicy, PolicyEngine
from authz.policy.loader import load_policy
from authz.transport.envoy_grpc import CheckResponse, build_check_request
from authz.transport.grpc_server import GrpcTransport

CHECK = "/envoy.service.auth.v3.Authorization/Check"
POLICY = """\
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Service:
    def __init__(self, transport: GrpcTransport, channel: grpc.aio.Channel, clock: Clock) -> None:
        self.transport = transport
        self.clock = clock
        self.check = channel.unary_unary(CHECK)  # no serializers: raw bytes both ways

    @property
    def servicer(self):  # type: ignore[no-untyped-def]
        return self.transport.authorization

    async def call(self, payload: bytes) -> tuple[grpc.StatusCode, str, bytes]:
        try:
            reply = await self.check(payload, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", b""
        return grpc.StatusCode.OK, "", reply


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    engine = PolicyEngine(CompiledPolicy(load_policy(path)))
    clock = Clock()
    transport = GrpcTransport(engine, "127.0.0.1:0", clock=clock)
    await transport.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{transport.port}",
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    )
    try:
        yield Service(transport, channel, clock)
    finally:
        await channel.close()
        await transport.stop(0)


def _nested(depth: int) -> bytes:
    """A Struct (dynamic metadata context) nested ``depth`` levels deep, inside a
    CheckRequest: ListValue{values: [Value{list_value: ...}]} over and over."""
    inner = b""
    for _ in range(depth):
        value = b"\x32" + _len(inner) + inner  # Value.list_value (field 6)
        inner = b"\x0a" + _len(value) + value  # ListValue.values (field 1)
    value = b"\x32" + _len(inner) + inner
    entry = b"\x0a\x01k" + b"\x12" + _len(value) + value  # Struct.fields entry {key, value}
    struct = b"\x0a" + _len(entry) + entry
    # AttributeContext.metadata_context (field 11) -> Metadata.filter_metadata (1) -> {key, Struct}
    filter_entry = b"\x0a\x01f" + b"\x12" + _len(struct) + struct
    metadata = b"\x0a" + _len(filter_entry) + filter_entry
    attributes = b"\x5a" + _len(metadata) + metadata
    return b"\x0a" + _len(attributes) + attributes


def _len(data: bytes) -> bytes:
    n, out = len(data), bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _decision(reply: bytes) -> tuple[int, str]:
    response = CheckResponse.FromString(reply)
    if response.HasField("ok_response"):
        return 200, "allowed"
    return response.denied_response.status.code, json.loads(response.denied_response.body)["error"]


GARBAGE = [
    pytest.param(b"\xff" * 64, id="0xff bytes"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="an HTTP request"),
    pytest.param(b"\x0a\x80\x80\x80\x80\x10", id="length beyond the message"),
    pytest.param(build_check_request(method="GET", path="/healthz", host="h", headers={})
                 .SerializeToString()[:-3], id="truncated CheckRequest"),
    pytest.param(b"\x0a\x05\x0a\x03\x1a\x01\xff", id="invalid UTF-8 in a string field"),
    pytest.param(b"\x0f", id="group end tag"),
    pytest.param(_nested(47), id="nested past protobuf's depth limit"),
    pytest.param(_nested(10_000), id="nested 10000 deep"),
]  # fmt: skip


@pytest.mark.parametrize("payload", GARBAGE)
async def test_garbage_is_invalid_argument(service: Service, payload: bytes) -> None:
    code, details, _ = await service.call(payload)
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "not a CheckRequest")
    assert service.servicer.invalid_requests == 1


async def test_garbage_flood_logs_one_line_per_interval(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for i in range(200):
        code, details, _ = await service.call(b"\xff\xfe" + bytes([i]) * 10)
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "not a CheckRequest")
    assert service.servicer.invalid_requests == 200
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].exc_info is None and "\n" not in lines[0].getMessage()
    assert "not a CheckRequest" in lines[0].getMessage()
    # ten seconds on: one more line, saying how many were not logged
    service.clock.now += 10
    await service.call(b"\xff")
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2
    assert "199 more since" in lines[1].getMessage()
    assert service.servicer.invalid_requests == 201
    # and the service still decides real requests
    ok = build_check_request(method="GET", path="/healthz", host="h", headers={})
    code, _, reply = await service.call(ok.SerializeToString())
    assert code == grpc.StatusCode.OK and _decision(reply) == (200, "allowed")
    assert not [r for r in caplog.records if r.exc_info]


def _without_http() -> bytes:
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.principal = "spiffe://td/x"
    request.attributes.request.time.seconds = 1
    return request.SerializeToString()


def _raw_header_values() -> bytes:
    """Headers as Envoy's header_map with raw (not UTF-8) values, on an undeclared path."""
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", "/nowhere"
    http.header_map.headers.add(key="x-request-id", raw_value=b"\xff\xfe\x00")
    http.header_map.headers.add(key="authorization", raw_value=b"Bearer \xc0\xaf")
    return request.SerializeToString()


def _huge_headers() -> bytes:
    http = attribute_context_pb2.AttributeContext.HttpRequest(method="GET", path="/healthz")
    for i in range(20_000):
        http.headers[f"x-h{i}"] = "v" * 300
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.CopyFrom(http)
    return request.SerializeToString()


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        pytest.param(b"", 400, "invalid_path", id="empty CheckRequest"),
        pytest.param(_without_http(), 400, "invalid_path", id="no http attributes"),
        pytest.param(_nested(46), 400, "invalid_path", id="nested to protobuf's depth limit"),
        pytest.param(b"\x0a\x00" * 1000, 400, "invalid_path", id="repeated empty attributes"),
        pytest.param(b"\x78\x01", 400, "invalid_path", id="unknown field only"),
        pytest.param(_raw_header_values(), 404, "undeclared_route", id="raw header values"),
    ],
)
async def test_any_check_request_gets_a_decision(
    service: Service, payload: bytes, status: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    code, _, reply = await service.call(payload)
    assert code == grpc.StatusCode.OK
    assert _decision(reply) == (status, reason)
    assert service.servicer.invalid_requests == 0
    assert not [r for r in caplog.records if r.exc_info]


async def test_huge_message(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    """6 MB of headers (under the 8 MB receive limit) is decided; over the limit,
    gRPC itself refuses it (RESOURCE_EXHAUSTED) before it is read; neither logs a
    traceback."""
    payload = _huge_headers()
    assert 5_000_000 < len(payload) < 8 * 1024 * 1024
    code, _, reply = await service.call(payload)
    assert code == grpc.StatusCode.OK
    assert _decision(reply) == (200, "allowed")
    code, _, _ = await service.call(b"\x0a" + _len(b"x" * (9 << 20)) + b"x" * (9 << 20))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not [r for r in caplog.records if r.exc_info]
