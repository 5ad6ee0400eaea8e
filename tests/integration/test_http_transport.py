"""The HTTP ext_authz server in process, over real sockets: checks, health, limits,
ordering on one connection, checks that wait on I/O, and draining."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from authz.audit.sink import MemorySink
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Decision, Request
from authz.policy.loader import load_policy
from authz.transport import http_wire
from authz.transport.http_server import HttpTransport

KEY = "http-key-0123456789abcdef"
POLICY = """\
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {id: k, sha256: 4c7dc4fd1c4b7e3cbdc4b8b2b0cb69d48d33b43b2b6d0f6b0c0b0f5a0d7c2f1e, owner: team, scopes: [orders:read], expires: "2999-01-01"}
routes:
  - {name: get-order, path: "/v1/orders/{id}", methods: [GET], providers: [keys], scopes: [orders:read]}
"""


def _policy(tmp_path: Path) -> CompiledPolicy:
    import hashlib

    text = POLICY.replace(
        "4c7dc4fd1c4b7e3cbdc4b8b2b0cb69d48d33b43b2b6d0f6b0c0b0f5a0d7c2f1e",
        hashlib.sha256(KEY.encode()).hexdigest(),
    )
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return CompiledPolicy(load_policy(path))


class Server:
    def __init__(self, transport: HttpTransport, engine: PolicyEngine, sink: MemorySink) -> None:
        self.transport = transport
        self.engine = engine
        self.sink = sink

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.transport.port)

    async def exchange(
        self, raw: bytes, responses: int = 1
    ) -> list[tuple[int, dict[str, str], bytes]]:
        reader, writer = await self.open()
        writer.write(raw)
        await writer.drain()
        out = [await read_response(reader) for _ in range(responses)]
        writer.close()
        return out


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def get(target: str, *extra: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: api.local", *extra]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture()
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    sink = MemorySink()
    engine = PolicyEngine(_policy(tmp_path), sink=sink)
    transport = HttpTransport(engine, "127.0.0.1:0")
    await transport.start()
    await transport.set_serving(True)
    yield Server(transport, engine, sink)
    await transport.stop(1.0)


async def test_allow_and_deny(server: Server) -> None:
    [(status, headers, body)] = await server.exchange(
        get("/check/v1/orders/1", f"x-api-key: {KEY}", "x-request-id: r-1")
    )
    assert status == 200
    assert body == b""
    assert headers["x-authz-subject"] == "team"
    assert headers["x-authz-meta-reason"] == "allowed"
    [(status, headers, body)] = await server.exchange(
        get("/check/v1/orders/1", "x-request-id: r-2")
    )
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer realm=")
    assert json.loads(body) == {"error": "missing_credential", "request_id": "r-2"}
    assert [r["reason"] for r in server.sink.records] == ["allowed", "missing_credential"]


async def test_health_follows_serving_and_draining(tmp_path: Path) -> None:
    engine = PolicyEngine(_policy(tmp_path), sink=MemorySink())
    transport = HttpTransport(engine, "127.0.0.1:0")
    await transport.start()
    srv = Server(transport, engine, MemorySink())
    [(status, _, _)] = await srv.exchange(get("/healthz"))
    assert status == 503  # not ready until the service says so
    await transport.set_serving(True)
    [(status, _, body)] = await srv.exchange(get("/healthz"))
    assert (status, body) == (200, b"ok")
    await transport.stop(0.5)
    with pytest.raises(OSError):
        await srv.open()


@pytest.mark.parametrize(
    "target", ["/healthz/x", "/v1/orders/1", "/checkout/v1/orders/1", "/", "*"]
)
async def test_only_check_and_health_paths_are_served(server: Server, target: str) -> None:
    [(status, _, _)] = await server.exchange(get(target, f"x-api-key: {KEY}"))
    assert status == 404
    assert server.sink.records == []  # nothing was decided


async def test_malformed_request_is_400_and_closes(server: Server) -> None:
    reader, writer = await server.open()
    writer.write(b"GET /check/v1/orders/1 HTTP/1.1\r\nbad header line\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 400
    assert headers["connection"] == "close"
    assert await reader.read() == b""  # closed
    writer.close()


async def test_oversized_headers_are_refused(server: Server) -> None:
    big = "x-big: " + "a" * (http_wire.MAX_HEADER_BYTES + 10)
    [(status, _, _)] = await server.exchange(get("/check/v1/orders/1", big))
    assert status == 431


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    raw = b"".join(
        get(
            f"/check/v1/orders/{i}",
            f"x-request-id: r-{i}",
            *([f"x-api-key: {KEY}"] if i % 2 else []),
        )
        for i in range(6)
    )
    answers = await server.exchange(raw, responses=6)
    assert [s for s, _, _ in answers] == [401, 200, 401, 200, 401, 200]
    denied = [json.loads(b)["request_id"] for s, _, b in answers if s == 401]
    assert denied == ["r-0", "r-2", "r-4"]


async def test_body_reaches_the_request(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Request] = []
    real = server.engine.check

    async def spy(request: Request) -> Decision:
        seen.append(request)
        return await real(request)

    monkeypatch.setattr(server.engine, "check", spy)
    await server.exchange(get("/check/v1/orders/1", method="POST", body=b'{"a": 1}'))
    assert seen[0].body == b'{"a": 1}'
    assert seen[0].method == "POST"
    assert seen[0].path == "/v1/orders/1"


class _Slow:
    """An engine check that waits on a future (like a key set fetch)."""

    def __init__(self, server: Server) -> None:
        self.gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.real = server.engine.check
        self.calls = 0

    async def check(self, request: Request) -> Any:
        self.calls += 1
        if request.path.endswith("/slow"):
            await self.gate
        return await self.real(request)


async def test_a_check_that_waits_is_answered_and_keeps_order(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = _Slow(server)
    monkeypatch.setattr(server.engine, "check", slow.check)
    reader, writer = await server.open()
    writer.write(
        get("/check/v1/orders/slow", "x-request-id: first")
        + get("/check/v1/orders/2", "x-request-id: second")
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    assert slow.calls == 1  # the second waits for the first on this connection
    slow.gate.set_result(None)
    first = await read_response(reader)
    second = await read_response(reader)
    assert json.loads(first[2])["request_id"] == "first"
    assert json.loads(second[2])["request_id"] == "second"
    writer.close()


async def test_drain_answers_the_check_in_flight(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = _Slow(server)
    monkeypatch.setattr(server.engine, "check", slow.check)
    reader, writer = await server.open()
    writer.write(get("/check/v1/orders/slow", f"x-api-key: {KEY}"))
    await writer.drain()
    await asyncio.sleep(0.1)
    stopping = asyncio.ensure_future(server.transport.stop(5.0))
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waiting for the check in flight
    slow.gate.set_result(None)
    status, headers, _ = await read_response(reader)
    assert status == 200
    assert headers["connection"] == "close"
    await asyncio.wait_for(stopping, 5)
    writer.close()


async def test_pipelining_behind_a_waiting_check_is_bounded(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = _Slow(server)
    monkeypatch.setattr(server.engine, "check", slow.check)
    reader, writer = await server.open()
    many = get("/check/v1/orders/2") * (http_wire.MAX_PIPELINED + 5)
    writer.write(get("/check/v1/orders/slow") + many)
    await writer.drain()
    status, headers, _ = await read_response(reader)
    assert status == 503
    assert headers["connection"] == "close"
    slow.gate.set_result(None)
    writer.close()


async def test_health_is_get_only(server: Server) -> None:
    [(status, _, _)] = await server.exchange(get("/healthz", method="POST"))
    assert status == 404
