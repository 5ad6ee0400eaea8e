"""One HTTP/1.1 connection of the ext_authz HTTP transport (an ``asyncio.Protocol``
over httptools' parser).

Requests on one connection are answered in order. A check whose engine call does
not wait on anything (the common case: a cached token) is answered without
creating a task; one that waits (a key set fetch) continues as a task.

A connection enforces the size bounds of :class:`~authz.transport.http_wire.HttpLimits`
as bytes arrive (414, 431, 413) and stores its phase and a coarse timestamp; the
server's sweep (:mod:`authz.transport.http_server`) calls :meth:`HttpConnection.expire`
to apply the timeouts. What it needs of the server is :class:`ConnectionOwner`.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from authz.model import Decision
from authz.transport.envoy_http import (
    CHECK_PREFIX,
    HEALTH_PATH,
    SECRET_HEADER,
    to_request,
    to_response,
)
from authz.transport.http_wire import MAX_BODY, MAX_PIPELINED, HttpLimits, render, simple
from authz.transport.resume import Resume, run_resumed

if TYPE_CHECKING:
    from authz.engine import PolicyEngine
    from authz.telemetry.metrics import Counter

log = logging.getLogger("authz.http")

#: Header names seen (bytes as sent -> lower-case str), bounded.
HEADER_NAMES: dict[bytes, str] = {}


class ConnectionOwner(Protocol):
    """What a connection reads and updates on its server
    (:class:`~authz.transport.http_server.HttpTransport`)."""

    engine: PolicyEngine
    limits: HttpLimits
    secret: bytes | None
    connections: set[HttpConnection]
    max_connections: int
    clock: float  # the sweep's coarse clock
    draining: bool
    inflight: int
    closed_since_trim: int
    timed_out_counter: Counter
    idle_closed_counter: Counter

    def ready(self) -> bool: ...

    def count_refused(self, status: int) -> None: ...

    def refuse_connection(self, transport: asyncio.BaseTransport) -> None: ...

    def refuse_check(self, peer: str, *, missing: bool) -> None: ...


# Connection phases: what the sweep measures a connection's time against.
_IDLE = 0  # no request in progress (or one being answered): idle_timeout
_HEAD = 1  # request line and headers arriving: header_timeout
_BODY = 2  # body arriving: body_timeout
_LINGER = 3  # answered with an error, half-closed, reading paused: LINGER_SECONDS
#: After an error answer the connection is half-closed and kept (not read) a moment
#: before it is closed: closing with unread input makes the kernel send a reset,
#: which can destroy the answer before the client has read it. With reading paused,
#: TCP flow control stops the client, so lingering costs neither CPU nor memory.
LINGER_SECONDS = 1.0


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, bound, answer in order (see the module notes)."""

    __slots__ = (
        "_body",
        "_body_bytes",
        "_busy",
        "_head_bytes",
        "_parser",
        "_phase",
        "_queue",
        "_raw",
        "_server",
        "_since",
        "_transport",
        "_url",
    )

    def __init__(self, server: ConnectionOwner) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []
        # Bytes fed to the parser since the last request ended: the request line and
        # headers of the next one (exact for a client that waits for each answer, as
        # Envoy does; a pipelining client can add at most one read to it).
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        # (method, target, headers, body, keep_alive) waiting for the one in progress
        self._queue: collections.deque[tuple[str, str, dict[str, str], bytes, bool]] = (
            collections.deque()
        )
        self._busy = False
        self._phase = _IDLE
        self._since = server.clock  # when the phase began (the sweep's coarse clock)

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if len(server.connections) >= server.max_connections:
            server.refuse_connection(transport)
            return
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._server.closed_since_trim += 1
        self._transport = None
        # Let go of everything a request may have buffered now, not when the cyclic
        # collector finds the parser <-> protocol cycle.
        self._url = b""
        self._raw = []
        self._body = []
        self._queue.clear()
        self._parser = _CLOSED

    def data_received(self, data: bytes) -> None:
        if self._phase != _BODY:
            if self._phase == _LINGER:
                return  # read before reading paused: dropped
            # A request line and headers are arriving: never hand the parser (which
            # buffers a header until it ends) more than max_head of them.
            seen = self._head_bytes + len(data)
            if seen > self._server.limits.max_head:
                self._feed_bounded(data)
                return
            self._head_bytes = seen
        self._feed(data)

    def _feed(self, data: bytes) -> None:
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

    def _feed_bounded(self, data: bytes) -> None:
        """Feed ``data`` when it would take the current head past max_head: only up to
        the bound while a head is arriving; 431 if the head has not ended by then."""
        limit = self._server.limits.max_head
        view = memoryview(data)
        while view and self._transport is not None:
            if self._phase == _LINGER:
                return
            if self._phase == _BODY:
                self._feed(bytes(view))
                return
            room = limit - self._head_bytes
            if room <= 0:
                self._fail(431, b"request line and headers too large")
                return
            chunk = view[:room]
            self._head_bytes += len(chunk)
            view = view[len(chunk) :]
            self._feed(bytes(chunk))

    # -- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._raw = []
        self._body = []
        self._body_bytes = 0
        self._phase = _HEAD
        self._since = self._server.clock

    def on_url(self, url: bytes) -> None:
        # Counted as it streams in (the parser hands it over in pieces): a target past
        # the bound is refused before the rest of it is read.
        url = self._url + url
        if len(url) > self._server.limits.max_target:
            raise _TooLarge(414, b"request target too large")
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only collect here (one call per header); the dict is built once per request.
        # Their size is bounded in data_received.
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._since = self._server.clock

    def _header_dict(self) -> dict[str, str]:
        names = HEADER_NAMES
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
        self._phase = _IDLE
        self._since = self._server.clock
        self._head_bytes = 0
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
                    simple(200 if ready else 503, b"ok" if ready else b"not ready", close=close),
                    close,
                )
            else:
                self._write(simple(404, b"not found", close=close), close)
            return
        rest = target[len(CHECK_PREFIX) :]
        if rest and rest[0] != "/":
            self._write(simple(404, b"not found", close=close), close)
            return
        secret = server.secret
        given = headers.pop(SECRET_HEADER, None)
        if secret is not None and (
            given is None
            or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret)
        ):
            server.refuse_check(self._peer(), missing=given is None)
            self._write(simple(403, b"forbidden", close=close), close)
            return
        try:
            request = to_request(method, target, headers, body)
        except Exception:
            log.exception("cannot read a check request")
            self._write(simple(400, b"bad check request", close=close), close)
            return
        coro = server.engine.check(request)
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            self._respond(stop.value, close)
            return
        except Exception:  # check never raises; if it did, fail closed
            log.exception("check failed outside the engine")
            self._write(simple(500, b"internal error", close=True), True)
            return
        # The engine is waiting on I/O: let a task continue it, answer when done.
        self._busy = True
        server.inflight += 1
        task = asyncio.ensure_future(run_resumed(Resume(coro, yielded)))
        task.add_done_callback(lambda t: self._finished(t, close))

    def _finished(self, task: asyncio.Future[Decision], close: bool) -> None:
        self._busy = False
        self._server.inflight -= 1
        if self._phase == _IDLE:
            self._since = self._server.clock  # idle from the answer on, not the request
        if task.cancelled():
            self._write(simple(503, b"shutting down", close=True), True)
            return
        exc = task.exception()
        if exc is not None:
            log.error("check failed outside the engine", exc_info=exc)
            self._write(simple(500, b"internal error", close=True), True)
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
        """Answer ``status`` and close: at once when an answer is still owed before
        this one, else after a short linger that discards what the client still sends."""
        server = self._server
        server.count_refused(status)
        transport = self._transport
        if transport is None:
            return
        transport.write(simple(status, message, close=True))
        if self._busy or self._queue or not transport.can_write_eof():
            self._abort()
            return
        transport.write_eof()
        transport.pause_reading()
        self._phase = _LINGER
        self._since = server.clock
        self._parser = _CLOSED
        self._url = b""
        self._raw = []
        self._body = []

    def _abort(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.close()
            self._transport = None

    def _peer(self) -> str:
        transport = self._transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"

    def expire(self, cuts: tuple[float, float, float, float]) -> None:
        """Called by the sweep: close the connection if its phase has lasted too long."""
        phase = self._phase
        if self._since >= cuts[phase] or self._transport is None:
            return
        if phase == _LINGER:
            self._abort()
        elif phase == _IDLE:
            if not self._busy:  # a check in flight is not idleness
                self._server.idle_closed_counter.inc()
                self._abort()
        else:
            self._server.timed_out_counter.inc()
            if self._busy or self._queue:
                self._abort()  # an answer is still owed first: just close
            else:
                what = "headers" if phase == _HEAD else "body"
                self._fail(408, f"request {what} not received in time".encode())

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


class _Closed:
    """Stands in for the parser of a closed connection (whose buffers are let go)."""

    def feed_data(self, data: bytes) -> None:
        pass

    def get_method(self) -> bytes:
        return b""

    def should_keep_alive(self) -> bool:
        return False


_CLOSED: Any = _Closed()
