"""Target 2: byte streams into the real HttpTransport over a real socket.

The server runs on its own event loop in a background thread (uvloop when it is
installed, as ``authz serve`` runs it), with the fuzz policy. The oracle only uses
the transport's public behaviour: every connection gets well-formed HTTP/1.1
responses and/or a close, within a bound, and nothing is logged with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass

from authz.transport.http_server import HttpTransport
from fuzz.fixtures import CountingSink, build_engine

#: Longest one example may take; a connection still open after it is a hang.
DEFAULT_TIMEOUT = 5.0

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*\r\n")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+): ?([^\r\n]*)\r\n")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class _Problems(logging.Handler):
    """Records every log record that carries a traceback or is an error."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.seen.append(f"{record.name}: {record.getMessage()}")


class ServerThread:
    """A started HttpTransport on 127.0.0.1 (port 0), serving until :meth:`stop`."""

    def __init__(self) -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            self.loop = asyncio.new_event_loop()
        self.problems = _Problems()
        logging.getLogger().addHandler(self.problems)
        self.loop.set_exception_handler(
            lambda _loop, ctx: self.problems.seen.append(f"loop: {ctx.get('message')}")
        )
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.sink = CountingSink()
        self.transport: HttpTransport = asyncio.run_coroutine_threadsafe(
            self._start(), self.loop
        ).result(30)
        self.port = self.transport.port

    async def _start(self) -> HttpTransport:
        self._policy, engine = await build_engine(self.sink)
        transport = HttpTransport(engine, "127.0.0.1:0")
        await transport.start()
        await transport.set_serving(True)
        return transport

    def stop(self) -> None:
        async def _stop() -> None:
            await self.transport.stop(1.0)
            await self._policy.close()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        logging.getLogger().removeHandler(self.problems)


def parse_responses(data: bytes) -> tuple[list[Response], bytes]:
    """The complete responses at the start of ``data`` and what follows them.

    Raises AssertionError on anything that is not a well-formed response.
    """
    out: list[Response] = []
    pos = 0
    while pos < len(data):
        m = _STATUS_LINE.match(data, pos)
        if m is None:
            if len(data) - pos < 16 and b"HTTP/1.1 ".startswith(data[pos : pos + 9]):
                break  # a status line cut short
            raise AssertionError(f"not a status line at {pos}: {data[pos : pos + 80]!r}")
        status = int(m.group(1))
        at = m.end()
        headers: dict[str, str] = {}
        complete = False
        while True:
            if data.startswith(b"\r\n", at):
                at += 2
                complete = True
                break
            h = _HEADER_LINE.match(data, at)
            if h is None:
                rest = data[at:]
                assert b"\r\n" not in rest, f"malformed header line: {rest[:80]!r}"
                break  # cut short
            headers[h.group(1).decode().lower()] = h.group(2).decode("utf-8", "replace")
            at = h.end()
        if not complete:
            break
        assert "content-length" in headers, f"response without content-length: {headers}"
        length = int(headers["content-length"])
        if len(data) < at + length:
            break
        out.append(Response(status, headers, data[at : at + length]))
        pos = at + length
    return out, data[pos:]


def exchange(
    port: int,
    chunks: list[bytes],
    *,
    half_close: bool = True,
    expect: int | None = None,
    gap: float = 0.0,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[list[Response], bool]:
    """Send ``chunks`` on one connection; (responses, whether the server closed).

    With ``half_close`` the write side is shut after the last chunk, so the server
    must answer and close; with ``expect`` the exchange ends after that many
    responses. Raises AssertionError when the bound passes first (a hang).
    """
    deadline = time.monotonic() + timeout
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    received = b""
    closed = False
    try:
        try:
            for i, chunk in enumerate(chunks):
                if chunk:
                    sock.sendall(chunk)
                if gap and i + 1 < len(chunks):
                    time.sleep(gap)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN
            pass  # the server answered and closed before reading everything: allowed
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"hang: no close within {timeout}s, got {received[:200]!r}"
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(
                    f"hang: no close within {timeout}s, got {received[:200]!r}"
                ) from None
            except ConnectionResetError:
                closed = True
                responses, _ = parse_responses(received)  # a reset may cut the last one
                return responses, closed
            if not data:
                closed = True
                break
            received += data
            if expect is not None:
                responses, _ = parse_responses(received)
                # all answers in and none announced a close: done (a close is awaited)
                if len(responses) >= expect and not any(r.closes for r in responses):
                    break
    finally:
        sock.close()
    responses, rest = parse_responses(received)
    assert not rest or not closed, f"response cut short before the close: {rest[:200]!r}"
    for r in responses[:-1]:
        assert not r.closes, "a response after one that said connection: close"
    return responses, closed


def check_http_stream(
    server: ServerThread, chunks: list[bytes], *, gap: float = 0.0, timeout: float = DEFAULT_TIMEOUT
) -> list[Response]:
    """Arbitrary bytes, then a half close: responses and a close, nothing logged."""
    before = len(server.problems.seen)
    responses, closed = exchange(server.port, chunks, gap=gap, timeout=timeout)
    assert closed
    for r in responses:
        assert 200 <= r.status < 600
    new = server.problems.seen[before:]
    assert not new, f"logged: {new}"
    return responses


def check_http_requests(
    server: ServerThread,
    chunks: list[bytes],
    count: int,
    *,
    gap: float = 0.0,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Response]:
    """``count`` complete requests, connection left open: ``count`` answers (or a close)."""
    before = len(server.problems.seen)
    responses, closed = exchange(
        server.port, chunks, half_close=False, expect=count, gap=gap, timeout=timeout
    )
    if len(responses) < count:
        assert (responses and responses[-1].closes) or closed, (
            f"{len(responses)} of {count} answers and no close"
        )
    new = server.problems.seen[before:]
    assert not new, f"logged: {new}"
    return responses
