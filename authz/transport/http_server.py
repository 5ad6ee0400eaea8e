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

Bounds (:class:`HttpLimits`, the ``authz serve --http-*`` flags): the request
target is counted as it streams in (414 above ``max_target``), the request line
and headers together are never fed to the parser beyond ``max_head`` (431), a
request must deliver its headers within ``header_timeout`` and its body within
``body_timeout`` of them (408), a connection with no request in progress is closed
after ``idle_timeout``, and connections beyond ``max_connections`` are closed as
they are accepted (one log line per interval says so). Timeouts are enforced by one
sweep over the connections a few times per shortest timeout; the request path
only stores a phase and a coarse timestamp.

Trust (:mod:`authz.transport.envoy_http`): with a secret, a check without the
right ``x-authz-transport-secret`` is refused with 403 before the engine sees it;
without one, the transport refuses to bind anything but loopback unless told the
network is trusted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import hmac
import logging
import resource
import socket
import time
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

import httptools

from authz.engine import PolicyEngine
from authz.model import Decision
from authz.transport.envoy_http import (
    CHECK_PREFIX,
    HEALTH_PATH,
    SECRET_HEADER,
    is_loopback,
    to_request,
    to_response,
)
from authz.units import parse_host_port

log = logging.getLogger("authz.http")

MAX_BODY = 8 * 1024 * 1024  # as the gRPC transport's max receive message length
MAX_TARGET_BYTES = 16 * 1024
MAX_HEADER_BYTES = 64 * 1024  # request line + headers
MAX_PIPELINED = 64  # requests queued behind one that waits, per connection
#: Listen backlog: room for a burst of Envoy connections (the kernel caps it at
#: net.core.somaxconn, raised here when that is larger).
BACKLOG = 4096
#: File descriptors kept free beside the HTTP connections (gRPC, files, sockets).
_SPARE_FDS = 128
_LOG_INTERVAL = 10.0  # seconds between two log lines of one kind of refusal

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
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


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds and timeouts of the HTTP transport (sizes in bytes, times in seconds)."""

    #: The request target (``/check`` + path + query): 414 above it.
    max_target: int = MAX_TARGET_BYTES
    #: Request line and headers together: 431 above it. Never buffered beyond it.
    max_head: int = MAX_HEADER_BYTES
    #: From the first byte of a request to the end of its headers: 408, closed.
    header_timeout: float = 10.0
    #: From the end of the headers to the end of the body: 408, closed.
    body_timeout: float = 30.0
    #: A connection with no request in progress is closed after this. Keep it above
    #: the idle timeout of the client's pool (the generated Envoy config: 30 s), so
    #: the client closes first and never sends a check on a connection being closed.
    idle_timeout: float = 75.0
    #: Open connections; the ones accepted beyond it are closed at once.
    max_connections: int = 4096

    def __post_init__(self) -> None:
        if not 64 <= self.max_target <= self.max_head:
            raise ValueError(
                f"max_target {self.max_target} must be from 64 to max_head ({self.max_head})"
            )
        if not 1024 <= self.max_head <= 16 * 1024 * 1024:
            raise ValueError(f"max_head {self.max_head} must be from 1024 to 16777216")
        for name in ("header_timeout", "body_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not 0.01 <= value <= 86400:
                raise ValueError(f"{name} {value} must be from 0.01 to 86400 seconds")
        if not 1 <= self.max_connections <= 1_000_000:
            raise ValueError(f"max_connections {self.max_connections} must be from 1 to 1000000")

    @property
    def sweep_interval(self) -> float:
        """How often the sweep looks at the connections: a quarter of the shortest
        timeout, between 50 ms and 1 s."""
        shortest = min(self.header_timeout, self.body_timeout, self.idle_timeout)
        return min(1.0, max(0.05, shortest / 4))


class _Throttled:
    """One log line per interval for a kind of event, counting the ones in between."""

    __slots__ = ("_interval", "_last", "_logger", "_suppressed")

    def __init__(self, logger: logging.Logger, interval: float = _LOG_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        self._last = -interval
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last line)" if self._suppressed else ""
        self._last = now
        self._suppressed = 0
        self._logger.warning(message + "%s", *args, more)


# Connection phases: what the sweep measures a connection's time against.
_IDLE = 0  # no request in progress (or one being answered): idle_timeout
_HEAD = 1  # request line and headers arriving: header_timeout
_BODY = 2  # body arriving: body_timeout
_LINGER = 3  # answered with an error, half-closed, reading paused: _LINGER_SECONDS
#: After an error answer the connection is half-closed and kept (not read) a moment
#: before it is closed: closing with unread input makes the kernel send a reset,
#: which can destroy the answer before the client has read it. With reading paused,
#: TCP flow control stops the client, so lingering costs neither CPU nor memory.
_LINGER_SECONDS = 1.0


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

    def __init__(self, server: HttpTransport) -> None:
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
        secret = server.secret
        given = headers.pop(SECRET_HEADER, None)
        if secret is not None and (
            given is None
            or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret)
        ):
            server.refuse_check(self._peer(), missing=given is None)
            self._write(_simple(403, b"forbidden", close=close), close)
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
        if self._phase == _IDLE:
            self._since = self._server.clock  # idle from the answer on, not the request
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
        """Answer ``status`` and close: at once when an answer is still owed before
        this one, else after a short linger that discards what the client still sends."""
        server = self._server
        server.count_refused(status)
        transport = self._transport
        if transport is None:
            return
        transport.write(_simple(status, message, close=True))
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


class TransportConfigError(ValueError):
    """The HTTP transport cannot be set up as configured (the message says why)."""


class UntrustedBindError(TransportConfigError):
    """The HTTP transport would take identity headers from anyone who can reach it."""


def _fit_open_file_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards ``wanted`` + spare; the connection cap
    that fits what the process may open."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    need = wanted + _SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    fitted = max(1, soft - _SPARE_FDS)
    log.warning(
        "HTTP connection cap %d is above what the open-file limit %d allows; using %d",
        wanted,
        soft,
        fitted,
    )
    return fitted


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()
#: Closed connections between two malloc_trim calls, and the least time between them:
#: after a flood of connections that each buffered up to max_head, the freed heap is
#: handed back to the system instead of staying in the process.
_TRIM_AFTER_CLOSED = 64
_TRIM_INTERVAL = 5.0


def _backlog() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as fh:
            return max(BACKLOG, int(fh.read().strip()))
    except (OSError, ValueError):
        return BACKLOG


class HttpTransport:
    """The HTTP ext_authz server. Health answers 200 once the service calls
    ``set_serving(True)`` (policy loaded, providers ready) and until it drains."""

    def __init__(
        self,
        engine: PolicyEngine,
        address: str,
        *,
        reuse_port: bool = False,
        limits: HttpLimits | None = None,
        secret: str | None = None,
        trust_network: bool = False,
    ) -> None:
        """``address`` is HOST:PORT (an empty HOST is 127.0.0.1). ``secret``: every
        check must carry it in ``x-authz-transport-secret``. Without one, a HOST that
        is not loopback raises UntrustedBindError unless ``trust_network`` says only
        Envoy can reach it."""
        self.engine = engine
        where = parse_host_port(
            "127.0.0.1" + address if address.startswith(":") else address, port_zero=True
        )
        self._host, self._port = where.host, where.port
        if secret is None and not trust_network and not is_loopback(self._host):
            raise UntrustedBindError(
                f"the HTTP transport would listen on {self._host}, which is not loopback, "
                "without a transport secret: anyone who can reach it could send the "
                "identity headers only Envoy may set. Give --http-secret-file FILE (and "
                "the same file to `authz envoy-config --http-secret-file`), bind "
                "127.0.0.1, or pass --http-insecure-trust-network if only Envoy can "
                "reach this address"
            )
        self.secret: bytes | None = secret.encode() if secret is not None else None
        self.limits = limits or HttpLimits()
        self.max_connections = self.limits.max_connections
        self._reuse_port = reuse_port
        self._serving = False
        self.draining = False
        self.inflight = 0
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port = 0
        #: The sweep's clock (loop time, updated every sweep interval): what a
        #: connection stamps its phase with, so the request path never reads a clock.
        self.clock = 0.0
        # Counters of what the transport refused or closed by itself (in the metrics).
        m = engine.metrics
        self._refused_connections = m.counter(
            "authz_http_refused_connections_total", "connections closed at the connection cap"
        ).labels()
        self._refused_checks = m.counter(
            "authz_http_refused_checks_total", "checks without the right transport secret"
        ).labels()
        self._refused_requests = m.counter(
            "authz_http_refused_requests_total", "requests refused before a decision", ("status",)
        )
        self.timed_out_counter = m.counter(
            "authz_http_timed_out_total", "connections closed for a phase that lasted too long"
        ).labels()
        self.idle_closed_counter = m.counter(
            "authz_http_idle_closed_total", "idle connections closed"
        ).labels()
        self.closed_since_trim = 0
        self._trimmed_at = 0.0
        self._cap_log = _Throttled(log)
        self._secret_log = _Throttled(log)

    @property
    def refused_connections(self) -> int:
        return int(getattr(self._refused_connections, "value", 0))

    @property
    def refused_checks(self) -> int:
        return int(getattr(self._refused_checks, "value", 0))

    @property
    def timed_out(self) -> int:
        return int(getattr(self.timed_out_counter, "value", 0))

    @property
    def idle_closed(self) -> int:
        return int(getattr(self.idle_closed_counter, "value", 0))

    @property
    def refused_requests(self) -> dict[int, int]:
        """status (400, 408, 414, 431, ...) -> requests refused with it (from the metrics)."""
        series = getattr(self._refused_requests, "series", {})
        return {int(k[0]): int(v.value) for k, v in series.items() if k[0].isdigit()}

    def count_refused(self, status: int) -> None:
        """One request refused with ``status`` before a decision (a status this
        transport answers itself: a bounded set)."""
        self._refused_requests.labels(str(status)).inc()

    def refuse_connection(self, transport: asyncio.BaseTransport) -> None:
        """A connection beyond the cap: closed at once, counted, logged (throttled)."""
        transport.close()
        self._refused_connections.inc()
        self._cap_log.warning(
            "HTTP connection cap reached (%d open): closing new connections; "
            "raise --http-max-connections if this is legitimate load",
            len(self.connections),
        )

    def refuse_check(self, peer: str, *, missing: bool) -> None:
        """A check without the right transport secret: counted, logged (throttled)."""
        self._refused_checks.inc()
        self._secret_log.warning(
            "HTTP check from %s refused (403): %s %s header; only the Envoy config "
            "generated with --http-secret-file sends it",
            peer,
            "no" if missing else "wrong",
            SECRET_HEADER,
        )

    async def _sweep(self) -> None:
        """Close connections whose phase outlived its timeout: one pass per interval."""
        loop = asyncio.get_running_loop()
        limits = self.limits
        interval = limits.sweep_interval
        # A phase's stamp may be up to one interval old when it begins: allow for it,
        # so a timeout never fires early (it fires within two intervals after).
        slack = interval
        while True:
            await asyncio.sleep(interval)
            now = self.clock = loop.time()
            cuts = (
                now - limits.idle_timeout - slack,
                now - limits.header_timeout - slack,
                now - limits.body_timeout - slack,
                now - _LINGER_SECONDS - slack,
            )
            for conn in list(self.connections):
                conn.expire(cuts)
            if (
                self.closed_since_trim >= _TRIM_AFTER_CLOSED
                and now - self._trimmed_at >= _TRIM_INTERVAL
                and _TRIM is not None
            ):
                self.closed_since_trim = 0
                self._trimmed_at = now
                _TRIM(0)

    def ready(self) -> bool:
        return self._serving and not self.draining

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.clock = loop.time()
        self.max_connections = _fit_open_file_limit(self.limits.max_connections)
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self._host, self._port))
            sock.listen(_backlog())
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {self._host}:{self._port}: {exc.strerror}") from None
        sock.setblocking(False)
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        self.port = int(sock.getsockname()[1])
        self._sweeper = asyncio.ensure_future(self._sweep())

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
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
