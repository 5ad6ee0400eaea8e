"""The ext_authz HTTP transport: a raw asyncio HTTP/1.1 server (httptools parser).

Chosen by measurement (bench/http_stacks.py, results in bench/results/): a plain
``asyncio.Protocol`` with httptools' parser answers several times more requests
per CPU second than a framework, and an authorization callout needs no routing,
middleware or streaming: one request in, one small response out.

- ``GET /healthz``: 200 while the service is ready (policy loaded, key sets
  fetched), 503 before and while draining.
- ``CHECK_PREFIX + path``: one ext_authz check (see :mod:`authz.transport.envoy_http`).
- Anything else: 404 (which Envoy treats as a deny).

One connection (parsing, bounds, answering in order) is
:class:`~authz.transport.http_connection.HttpConnection`; the wire format and
:class:`~authz.transport.http_wire.HttpLimits` are :mod:`authz.transport.http_wire`.
This module listens, caps connections, sweeps timeouts and drains.

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
import contextlib
import ctypes
import ctypes.util
import logging
import resource
import socket
import time
from collections.abc import Callable

from authz.engine import PolicyEngine
from authz.transport.envoy_http import (
    SECRET_HEADER,
    is_loopback,
)
from authz.transport.http_connection import LINGER_SECONDS, HttpConnection
from authz.transport.http_wire import HttpLimits, UntrustedBindError
from authz.transport.tls import HANDSHAKE_TIMEOUT, CertificateReloader, TlsFiles
from authz.units import parse_host_port

log = logging.getLogger("authz.http")

#: Listen backlog: room for a burst of Envoy connections (the kernel caps it at
#: net.core.somaxconn, raised here when that is larger).
BACKLOG = 4096
#: File descriptors kept free beside the HTTP connections (gRPC, files, sockets).
_SPARE_FDS = 128
_LOG_INTERVAL = 10.0  # seconds between two log lines of one kind of refusal


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
        tls: TlsFiles | None = None,
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
        #: the listener's certificate, reread when its files change (None: plaintext)
        self.tls = CertificateReloader(tls) if tls is not None else None
        mtls = tls is not None and tls.client_ca is not None  # only Envoy's cert gets in
        if secret is None and not trust_network and not mtls and not is_loopback(self._host):
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
        self.connections: set[HttpConnection] = set()
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
                now - LINGER_SECONDS - slack,
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
        self._server = await loop.create_server(
            lambda: HttpConnection(self), sock=sock,
            ssl=self.tls.listener_context() if self.tls is not None else None,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.tls is not None else None,
        )  # fmt: skip
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
