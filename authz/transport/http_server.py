"""The ext_authz HTTP transport: a raw asyncio HTTP/1.1 server (httptools parser).

Chosen by measurement (bench/http_stacks.py, results in bench/results/): a plain
``asyncio.Protocol`` with httptools' parser answers several times more requests
per CPU second than a framework, and an authorization callout needs no routing,
middleware or streaming: one request in, one small response out.

- ``GET /healthz``: 200 while the service is ready (policy loaded, key sets
  fetched), 503 before and while draining.
- ``CHECK_PREFIX + path``: one ext_authz check (see :mod:`authz.transport.envoy_http`).
- Anything else: 404 (which Envoy treats as a deny).

Requests on one connection are answered in order. A check whose engine call does
not wait on anything (the common case: a cached token) is answered without
creating a task; one that waits (a key set fetch) continues as a task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from collections.abc import Coroutine, Generator
from typing import Any

import httptools

from authz.engine import PolicyEngine
from authz.model import Decision
from authz.transport.envoy_http import CHECK_PREFIX, HEALTH_PATH, to_request, to_response

log = logging.getLogger("authz.http")

MAX_BODY = 8 * 1024 * 1024  # as the gRPC transport's max receive message length
MAX_HEADER_BYTES = 64 * 1024
MAX_PIPELINED = 64  # requests queued behind one that waits, per connection

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_STATUS_LINE: dict[int, bytes] = {
    code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()
}
_CRLF_SENSITIVE = str.maketrans({"\r": "%0D", "\n": "%0A", "\x00": "%00"})
_CLOSE = b"connection: close\r\n"
#: Header names seen (bytes as sent -> lower-case str), bounded.
_HEADER_NAMES: dict[bytes, str] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINE.get(status)
    if line is None:
        line = _STATUS_LINE[status] = f"HTTP/1.1 {status} Status {status}\r\n".encode()
    return line


def render(status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool) -> bytes:
    """One HTTP/1.1 response; header names and values cannot break out of their line."""
    text = "".join([f"{k}: {v}\r\n" for k, v in headers])
    n = len(headers)
    if text.count("\n") != n or text.count("\r") != n or "\0" in text:
        # A CR, LF or NUL inside a name or value: escape it rather than split the line.
        text = "".join(
            [
                f"{k.translate(_CRLF_SENSITIVE)}: {v.translate(_CRLF_SENSITIVE)}\r\n"
                for k, v in headers
            ]
        )
    return b"%s%s%s%s\r\n%s" % (
        _status_line(status),
        text.encode("utf-8", "surrogateescape"),
        b"content-length: %d\r\n" % len(body),
        _CLOSE if close else b"",
        body,
    )


def _simple(status: int, body: bytes, *, close: bool = False) -> bytes:
    return render(status, [("content-type", "text/plain")], body, close=close)


class _Resume:
    """Continue a coroutine that was started by hand and suspended on ``yielded``.

    The first step of a check runs synchronously in the protocol callback; only
    when it really waits is it handed to a task, which resumes it from here.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Decision], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Decision]:
        coro, pending = self._coro, self._yielded
        while True:
            try:
                value = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like go into the coroutine
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    result: Decision = stop.value
                    return result
                continue
            try:
                pending = coro.send(value)
            except StopIteration as stop:
                done: Decision = stop.value
                return done


async def _await(awaitable: _Resume) -> Decision:
    return await awaitable


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_bytes",
        "_busy",
        "_header_bytes",
        "_parser",
        "_queue",
        "_raw",
        "_server",
        "_transport",
        "_url",
    )

    def __init__(self, server: HttpTransport) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        # (method, target, headers, body, keep_alive) waiting for the one in progress
        self._queue: collections.deque[tuple[str, str, dict[str, str], bytes, bool]] = (
            collections.deque()
        )
        self._busy = False

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b"upgrade not supported")
        except httptools.HttpParserError as exc:
            # httptools wraps an exception raised in a callback; find ours
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _TooLarge):
                self._fail(cause.status, cause.message)
            else:
                self._fail(400, b"malformed request")
        except _TooLarge as exc:
            self._fail(exc.status, exc.message)

    # -- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._raw = []
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only collect here (one call per header); the dict is built once per request.
        self._raw.append((name, value))
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _TooLarge(431, b"request headers too large")

    def _header_dict(self) -> dict[str, str]:
        names = _HEADER_NAMES
        headers: dict[str, str] = {}
        for name, value in self._raw:
            key = names.get(name)
            if key is None:
                key = name.decode("latin-1").lower()
                if len(names) < 512:
                    names[name] = key
            text = value.decode("utf-8", "surrogateescape")
            if key in headers:  # repeated: joined with ',' as Envoy does
                text = f"{headers[key]},{text}"
            headers[key] = text
        return headers

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY:
            raise _TooLarge(413, b"request body too large")

    def on_message_complete(self) -> None:
        parser = self._parser
        method = parser.get_method().decode("ascii", "replace")
        target = self._url.decode("utf-8", "surrogateescape")
        body = b"".join(self._body) if self._body else b""
        item = (method, target, self._header_dict(), body, parser.should_keep_alive())
        if self._busy:
            if len(self._queue) >= MAX_PIPELINED:  # Envoy never pipelines this deep
                raise _TooLarge(503, b"too many pipelined requests")
            self._queue.append(item)
        else:
            self._handle(*item)

    # -- handling ----------------------------------------------------------------

    def _handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes, keep_alive: bool
    ) -> None:
        server = self._server
        close = not keep_alive or server.draining
        if not target.startswith(CHECK_PREFIX):
            if target == HEALTH_PATH and method == "GET":
                ready = server.ready()
                self._write(
                    _simple(200 if ready else 503, b"ok" if ready else b"not ready", close=close),
                    close,
                )
            else:
                self._write(_simple(404, b"not found", close=close), close)
            return
        rest = target[len(CHECK_PREFIX) :]
        if rest and rest[0] != "/":
            self._write(_simple(404, b"not found", close=close), close)
            return
        try:
            request = to_request(method, target, headers, body)
        except Exception:
            log.exception("cannot read a check request")
            self._write(_simple(400, b"bad check request", close=close), close)
            return
        coro = server.engine.check(request)
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            self._respond(stop.value, close)
            return
        except Exception:  # check never raises; if it did, fail closed
            log.exception("check failed outside the engine")
            self._write(_simple(500, b"internal error", close=True), True)
            return
        # The engine is waiting on I/O: let a task continue it, answer when done.
        self._busy = True
        server.inflight += 1
        task = asyncio.ensure_future(_await(_Resume(coro, yielded)))
        task.add_done_callback(lambda t: self._finished(t, close))

    def _finished(self, task: asyncio.Future[Decision], close: bool) -> None:
        self._busy = False
        self._server.inflight -= 1
        if task.cancelled():
            self._write(_simple(503, b"shutting down", close=True), True)
            return
        exc = task.exception()
        if exc is not None:
            log.error("check failed outside the engine", exc_info=exc)
            self._write(_simple(500, b"internal error", close=True), True)
            return
        self._respond(task.result(), close or self._server.draining)
        while self._queue and not self._busy and self._transport is not None:
            self._handle(*self._queue.popleft())

    def _respond(self, decision: Decision, close: bool) -> None:
        status, headers, body = to_response(decision)
        self._write(render(status, headers, body, close=close), close)

    def _write(self, data: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(data)
        if close:
            transport.close()
            self._transport = None

    def _fail(self, status: int, message: bytes) -> None:
        self._write(_simple(status, message, close=True), True)

    @property
    def idle(self) -> bool:
        return not self._busy and not self._queue

    def close_if_idle(self) -> None:
        if self.idle and self._transport is not None:
            self._transport.close()
            self._transport = None


class _TooLarge(Exception):
    def __init__(self, status: int, message: bytes) -> None:
        super().__init__(message.decode())
        self.status = status
        self.message = message


class HttpTransport:
    """The HTTP ext_authz server. Health answers 200 once the service calls
    ``set_serving(True)`` (policy loaded, providers ready) and until it drains."""

    def __init__(
        self,
        engine: PolicyEngine,
        address: str,
        *,
        reuse_port: bool = False,
    ) -> None:
        self.engine = engine
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]") or "0.0.0.0"
        self._port = int(port)
        self._reuse_port = reuse_port
        self._serving = False
        self.draining = False
        self.inflight = 0
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def ready(self) -> bool:
        return self._serving and not self.draining

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self._host, self._port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {self._host}:{self._port}: {exc.strerror}") from None
        sock.setblocking(False)
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        self.port = int(sock.getsockname()[1])

    async def set_serving(self, serving: bool) -> None:
        self._serving = serving

    async def stop(self, grace: float) -> None:
        """Stop accepting, answer the checks in flight (up to ``grace`` s), close."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = time.monotonic() + grace
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            for conn in list(self.connections):
                conn.close_if_idle()
        for conn in list(self.connections):
            transport = conn._transport
            if transport is not None:
                transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
