"""The HTTP transport against hostile clients, over real sockets: huge request
targets and headers (414/431, read only up to the bound), slowloris headers and
bodies (408), idle keep-alive connections (closed), a flood of connections (capped,
logged once), and who may send the identity headers (the transport secret)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from authz.audit.sink import MemorySink
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Decision, Request
from authz.policy.loader import load_policy
from authz.transport.envoy_http import SECRET_HEADER
from authz.transport.http_server import HttpTransport
from authz.transport.http_wire import HttpLimits, UntrustedBindError

POLICY = """\
mode: enforce
undeclared_routes: deny
providers:
  mesh: {type: mtls, trust_domains: [demo.local]}
routes:
  - {name: mesh-only, path: /v1/mesh, methods: [GET, POST], providers: [mesh]}
"""
PEER = "spiffe://demo.local/ns/ops/sa/prometheus"
SECRET = "0123456789abcdef0123456789abcdef"
FAST = HttpLimits(
    max_target=1024,
    max_head=4096,
    header_timeout=0.3,
    body_timeout=0.3,
    idle_timeout=0.3,
    max_connections=50,
)


# (pytest-asyncio 1.x would rather have a conftest hook; one module needs no conftest)
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy"')


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Each test on the stdlib loop and on uvloop (what `authz serve` runs on)."""
    if request.param == "uvloop":
        import uvloop

        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


class Server:
    def __init__(self, transport: HttpTransport, sink: MemorySink) -> None:
        self.transport = transport
        self.sink = sink

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.transport.port)

    async def exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await self.open()
        writer.write(raw)
        await writer.drain()
        try:
            return await read_response(reader)
        finally:
            writer.close()


async def read_response(
    reader: asyncio.StreamReader, status_line: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    head = status_line + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not)."""
    return await asyncio.wait_for(reader.read(), seconds)


def request(target: str, *extra: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: api.local", *extra]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _start(
    tmp_path: Path, limits: HttpLimits | None = None, secret: str | None = None
) -> Server:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    sink = MemorySink()
    engine = PolicyEngine(CompiledPolicy(load_policy(path)), sink=sink)
    transport = HttpTransport(engine, "127.0.0.1:0", limits=limits, secret=secret)
    await transport.start()
    await transport.set_serving(True)
    return Server(transport, sink)


@pytest.fixture()
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await _start(tmp_path, FAST)
    yield srv
    await srv.transport.stop(1.0)


@pytest.fixture()
async def guarded(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await _start(tmp_path, FAST, secret=SECRET)
    yield srv
    await srv.transport.stop(1.0)


# ------------------------------------------------------------------------ sizes


async def _answer_while_streaming(
    server: Server, first: bytes
) -> tuple[tuple[int, dict[str, str], bytes], int]:
    """Send ``first``, then up to 64 MB more without ever ending the request, until
    the server answers (as a client reading while it writes does); the answer and the
    number of bytes sent by then."""
    reader, writer = await server.open()
    answered = asyncio.Event()
    sent = 0

    async def send() -> None:
        nonlocal sent
        writer.write(first)
        with contextlib.suppress(ConnectionError, OSError):
            while sent < 64 * 1024 * 1024 and not answered.is_set():
                writer.write(b"a" * 65536)
                await writer.drain()
                sent += 65536

    sender = asyncio.ensure_future(send())
    try:
        line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        answered.set()
        answer = await read_response(reader, line)
    finally:
        answered.set()
        await asyncio.wait_for(sender, 10)
        writer.close()
    return answer, sent


async def test_a_huge_target_is_414_before_it_is_read(server: Server) -> None:
    # 64 MB of target without ever ending the line: answered, and the connection
    # closed, long before it is all sent (the target is counted as it arrives).
    (status, headers, body), sent = await _answer_while_streaming(server, b"GET /check/v1/mesh?q=")
    assert (status, body) == (414, b"request target too large")
    assert headers["connection"] == "close"
    assert sent < 64 * 1024 * 1024
    assert server.sink.records == []  # never decided
    assert server.transport.refused_requests == {414: 1}


async def test_a_target_at_the_bound_is_decided(server: Server) -> None:
    base = "/check/v1/mesh?q="
    target = base + "a" * (FAST.max_target - len(base))
    status, _, body = await server.exchange(request(target))
    assert status == 401  # decided: no peer identity
    assert json.loads(body)["error"] == "missing_credential"
    status, _, _ = await server.exchange(request(target + "a"))
    assert status == 414
    assert len(server.sink.records) == 1


async def test_headers_past_the_bound_are_431(server: Server) -> None:
    many = [f"x-h{i}: {'v' * 60}" for i in range(FAST.max_head // 60)]
    status, headers, body = await server.exchange(request("/check/v1/mesh", *many))
    assert (status, body) == (431, b"request line and headers too large")
    assert headers["connection"] == "close"
    assert server.sink.records == []


async def test_line_and_headers_count_together(server: Server) -> None:
    # Each alone is within its bound; together they are not.
    target = "/check/v1/mesh?q=" + "a" * 1000
    fill = "x-fill: " + "b" * (FAST.max_head - len(target) - 40)
    status, _, _ = await server.exchange(request(target, fill))
    assert status == 431


async def test_an_unfinished_huge_header_is_cut_at_the_bound(server: Server) -> None:
    (status, _, _), sent = await _answer_while_streaming(
        server, b"GET /check/v1/mesh HTTP/1.1\r\nx-big: "
    )
    assert status == 431
    assert sent < 64 * 1024 * 1024


async def test_a_request_just_within_the_bound_is_decided(server: Server) -> None:
    raw = request("/check/v1/mesh")
    fill = "x-fill: " + "b" * (FAST.max_head - len(raw) - len("x-fill: \r\n"))
    raw = request("/check/v1/mesh", fill)
    assert len(raw) == FAST.max_head
    status, _, _ = await server.exchange(raw)
    assert status == 401
    status, _, _ = await server.exchange(request("/check/v1/mesh", fill + "b"))
    assert status == 431


async def test_a_body_after_a_large_head_in_one_read_is_not_counted_as_head(
    server: Server,
) -> None:
    fill = "x-fill: " + "b" * (FAST.max_head - 200)
    body = b"x" * (FAST.max_head * 4)  # arrives with the head, in the same reads
    status, _, _ = await server.exchange(request("/check/v1/mesh", fill, method="POST", body=body))
    assert status == 401  # decided, not 431


# ------------------------------------------------------------------------ timeouts


async def test_slowloris_headers_get_408_and_are_closed(server: Server) -> None:
    reader, writer = await server.open()
    writer.write(b"GET /check/v1/mesh HTTP/1.1\r\nhost: api.local\r\n")

    async def trickle() -> None:
        for _ in range(100):  # one byte every 50 ms: never finishes within 0.3 s
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    task = asyncio.ensure_future(trickle())
    try:
        status, headers, body = await asyncio.wait_for(read_response(reader), 3)
    finally:
        task.cancel()
    assert (status, body) == (408, b"request headers not received in time")
    assert headers["connection"] == "close"
    assert await closed_within(reader, 2) == b""
    assert server.transport.timed_out == 1
    assert server.sink.records == []
    writer.close()


async def test_a_slow_body_gets_408(server: Server) -> None:
    reader, writer = await server.open()
    writer.write(b"POST /check/v1/mesh HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nab")
    await writer.drain()
    status, _, body = await asyncio.wait_for(read_response(reader), 3)
    assert (status, body) == (408, b"request body not received in time")
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    reader, writer = await server.open()
    writer.write(request("/check/v1/mesh"))
    status, headers, _ = await read_response(reader)
    assert status == 401 and headers.get("connection") != "close"  # kept alive
    await asyncio.sleep(0.1)
    writer.write(request("/check/v1/mesh"))  # still usable before the idle timeout
    status, _, _ = await read_response(reader)
    assert status == 401
    assert await closed_within(reader, 3) == b""  # then closed, silently
    assert server.transport.idle_closed == 1
    assert not server.transport.connections
    writer.close()


async def test_a_connection_that_never_sends_is_closed(server: Server) -> None:
    reader, writer = await server.open()
    assert await closed_within(reader, 3) == b""
    writer.close()


async def test_a_check_that_waits_is_not_idle(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    real = server.transport.engine.check

    async def slow(req: Request) -> Decision:
        await gate
        return await real(req)

    monkeypatch.setattr(server.transport.engine, "check", slow)
    reader, writer = await server.open()
    writer.write(request("/check/v1/mesh"))
    await writer.drain()
    await asyncio.sleep(FAST.idle_timeout * 3)  # longer than the idle timeout
    gate.set_result(None)
    status, _, _ = await read_response(reader)
    assert status == 401  # answered, not closed as idle
    writer.close()


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_target 70000 must be from 64 to max_head"):
        HttpLimits(max_target=70000)
    with pytest.raises(ValueError, match="header_timeout 0 must be from"):
        HttpLimits(header_timeout=0)
    with pytest.raises(ValueError, match="max_connections 0"):
        HttpLimits(max_connections=0)
    assert HttpLimits().sweep_interval == 1.0
    assert FAST.sweep_interval == pytest.approx(0.075)


# ------------------------------------------------------------------------ connection cap


async def test_connections_beyond_the_cap_are_closed_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await _start(tmp_path, HttpLimits(max_connections=3))
    try:
        kept = [await srv.open() for _ in range(3)]
        for reader, writer in kept:  # each of them is served
            writer.write(request("/check/v1/mesh"))
            assert (await read_response(reader))[0] == 401
        with caplog.at_level(logging.WARNING, logger="authz.http"):
            for _ in range(20):
                reader, writer = await srv.open()
                assert await closed_within(reader, 2) == b""  # closed at once, no answer
                writer.close()
        lines = [r.getMessage() for r in caplog.records if "connection cap" in r.getMessage()]
        assert lines == [
            "HTTP connection cap reached (3 open): closing new connections; "
            "raise --http-max-connections if this is legitimate load"
        ]
        assert srv.transport.refused_connections == 20
        kept[0][1].close()
        await asyncio.sleep(0.2)
        reader, writer = await srv.open()  # room again
        writer.write(request("/check/v1/mesh"))
        assert (await read_response(reader))[0] == 401
        writer.close()
        for _, w in kept[1:]:
            w.close()
    finally:
        await srv.transport.stop(1.0)


# ------------------------------------------------------------------------ trust


async def test_without_a_secret_a_forged_peer_principal_is_believed_on_loopback(
    server: Server,
) -> None:
    # What the secret is for: the trusted headers are taken as Envoy's.
    status, _, _ = await server.exchange(
        request("/check/v1/mesh", f"x-authz-peer-principal: {PEER}")
    )
    assert status == 200


async def test_a_forged_peer_principal_without_the_secret_is_refused(
    guarded: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="authz.http"):
        for _ in range(5):
            status, _, body = await guarded.exchange(
                request("/check/v1/mesh", f"x-authz-peer-principal: {PEER}")
            )
            assert (status, body) == (403, b"forbidden")
    assert guarded.sink.records == []  # refused before the engine saw it
    assert guarded.transport.refused_checks == 5
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1  # rate-limited
    assert "no x-authz-transport-secret header" in lines[0]


@pytest.mark.parametrize(
    "value",
    [SECRET[:-1], SECRET + "x", SECRET.upper(), "", f"{SECRET},{SECRET}", "sécret"],
)
async def test_a_wrong_secret_is_refused(guarded: Server, value: str) -> None:
    raw = request("/check/v1/mesh", f"x-authz-peer-principal: {PEER}")
    raw = raw.replace(b"\r\n\r\n", f"\r\n{SECRET_HEADER}: {value}\r\n\r\n".encode())
    status, _, _ = await guarded.exchange(raw)
    assert status == 403
    assert guarded.sink.records == []


async def test_a_repeated_secret_header_is_refused(guarded: Server) -> None:
    status, _, _ = await guarded.exchange(
        request("/check/v1/mesh", f"{SECRET_HEADER}: {SECRET}", f"{SECRET_HEADER}: {SECRET}")
    )
    assert status == 403


async def test_with_the_secret_the_check_is_decided_and_the_engine_never_sees_it(
    guarded: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Request] = []
    real = guarded.transport.engine.check

    async def spy(req: Request) -> Decision:
        seen.append(req)
        return await real(req)

    monkeypatch.setattr(guarded.transport.engine, "check", spy)
    status, headers, _ = await guarded.exchange(
        request("/check/v1/mesh", f"x-authz-peer-principal: {PEER}", f"{SECRET_HEADER}: {SECRET}")
    )
    assert status == 200
    assert headers["x-authz-subject"] == PEER
    assert SECRET_HEADER not in seen[0].headers
    assert SECRET not in json.dumps(guarded.sink.records)
    # health and non-check paths need no secret and reveal nothing
    status, _, _ = await guarded.exchange(request("/healthz"))
    assert status == 200


def test_binding_beyond_loopback_needs_a_secret_or_an_explicit_override(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    engine = PolicyEngine(CompiledPolicy(load_policy(path)), sink=MemorySink())
    for address in ("0.0.0.0:0", "[::]:0", "10.1.2.3:9192", "authz:9192"):
        with pytest.raises(UntrustedBindError, match="not loopback"):
            HttpTransport(engine, address)
        HttpTransport(engine, address, secret=SECRET)
        HttpTransport(engine, address, trust_network=True)
    for address in ("127.0.0.1:0", "[::1]:0", "localhost:0", ":0", "127.0.0.2:0"):
        HttpTransport(engine, address)
