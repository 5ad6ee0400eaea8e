"""``GET /metrics``: the Prometheus scrape endpoint (``authz serve --metrics HOST:PORT``).

Its own small HTTP/1.1 listener, not the control plane's port: the control plane is
a gRPC server, and a scraper speaks plain HTTP. Like Envoy's admin
``/stats/prometheus`` it is read-only and, bound to loopback (the default), open;
anywhere else it needs a bearer token (``--metrics-token-file``: Prometheus's
``authorization: {credentials_file: ...}``) or the explicit
``--metrics-insecure-open`` (a network only the scraper reaches). Metrics name
routes and reason codes, never a subject or an address, but they still tell an
outsider what the service protects and how it is doing.

Bounded: at most :data:`MAX_CONNECTIONS` at once, a request head of at most
:data:`MAX_HEAD` bytes read within :data:`READ_TIMEOUT` seconds, one request per
connection (``Connection: close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable

from authz.telemetry.prometheus import CONTENT_TYPE

log = logging.getLogger("authz.telemetry")

MAX_CONNECTIONS = 16
MAX_HEAD = 8192
READ_TIMEOUT = 5.0

#: what the endpoint serves: the text of every metric now
Source = Callable[[], Awaitable[str]]


class MetricsEndpoint:
    """A runtime (start/aclose) answering ``GET /metrics`` with ``source()``."""

    def __init__(self, address: str, source: Source, *, token: str | None = None) -> None:
        self.address = address
        self._source = source
        self._token = token
        self._server: asyncio.AbstractServer | None = None
        self._open = 0
        self.port = 0

    async def start(self) -> None:
        host, _, port = self.address.rpartition(":")
        self._server = await asyncio.start_server(
            self._serve, host.strip("[]") or "127.0.0.1", int(port), limit=MAX_HEAD
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        try:
            status, body, content_type = await self._answer(reader)
            head = (
                f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n"
            )
            if status.startswith("401"):
                head += 'www-authenticate: Bearer realm="authz-metrics"\r\n'
            writer.write(head.encode("ascii") + b"\r\n" + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("metrics endpoint failed")
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, bytes, str]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return "400 Bad Request", b"bad request\n", "text/plain"
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return "400 Bad Request", b"bad request\n", "text/plain"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if target != "/metrics":
            return "404 Not Found", b"not found: try /metrics\n", "text/plain"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        if self._token is not None and not self._authorized(lines[1:]):
            return "401 Unauthorized", b"unauthorized\n", "text/plain"
        text = await self._source()
        return "200 OK", text.encode("utf-8") if method == "GET" else b"", CONTENT_TYPE

    def _authorized(self, headers: list[str]) -> bool:
        assert self._token is not None
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() == "authorization":
                scheme, _, given = value.strip().partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    given.strip().encode(), self._token.encode()
                )
        return False
