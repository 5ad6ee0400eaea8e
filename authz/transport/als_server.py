"""Envoy's gRPC access-log service (``envoy.service.accesslog.v3.AccessLogService``).

Envoy's ``envoy.access_loggers.http_grpc`` logger (wired by ``authz envoy-config
--access-log``) opens a long-lived client stream and sends batches of HTTP log
entries (``StreamAccessLogsMessage.http_logs``); the service never answers until the
stream ends. :class:`AccessLogServicer` hands each batch to the
:class:`~authz.feedback.feed.ResponseFeed` (bounded; translation happens in its drain
task) and reads on: it never waits for the feed.

:class:`AccessLogServer` is its own grpc.aio server on its own port (``authz serve
--access-log-grpc HOST:PORT``), a runtime: building it binds nothing; ``start``
binds and serves, ``aclose`` stops (streams are cancelled: Envoy reconnects).
Why not an extra service on the ext_authz gRPC port: the HTTP transport has no
gRPC server to share, the feed can then be turned on or off without touching the
port every check uses, and a misbehaving log stream shares no server (options,
limits, health) with Check.

Trust: what arrives here drives detectors (which block and revoke) and shedding, so a
forged stream could frame a client address or fake an outage. With a secret
(``--access-log-secret-file``, the same file given to ``authz envoy-config
--access-log-secret-file``, which has Envoy send it as the stream's
``x-authz-transport-secret`` metadata), a stream without it is refused
(UNAUTHENTICATED, counted) before any entry is read; without one the port must bind a
loopback address (:func:`check_exposure`).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from authz.feedback.feed import ResponseFeed
from authz.telemetry.metrics import MemoryMetrics, Metrics
from authz.transport.envoy_als import (
    ACCESS_LOG_SERVICE,
    StreamAccessLogsMessage,
    StreamAccessLogsResponse,
    to_observation,
)
from authz.transport.envoy_http import SECRET_HEADER, is_loopback
from authz.transport.grpc_server import SERVER_OPTIONS, RateLimitedLog

log = logging.getLogger("authz.feedback")

_EMPTY_RESPONSE: bytes = StreamAccessLogsResponse().SerializeToString()
#: Seconds streams get to finish when the server stops (Envoy reconnects anyway).
STOP_GRACE = 0.5


def _parse(raw: bytes) -> Any:
    """None for bytes that are not a StreamAccessLogsMessage (gRPC never sees an error)."""
    try:
        return StreamAccessLogsMessage.FromString(raw)
    except Exception:
        return None


def _encoded(response: bytes) -> bytes:
    return response


def check_exposure(address: str, secret: str | None, trust_network: bool = False) -> None:
    """Raise ValueError when ``address`` is reachable beyond this host and nothing proves
    a stream comes from Envoy (no secret, and ``trust_network`` not given)."""
    from authz.units import parse_host_port

    host = parse_host_port(address, port_zero=True).host
    if secret is None and not trust_network and not is_loopback(host):
        raise ValueError(
            f"--access-log-grpc {address}: {host} is not a loopback address, and without a "
            "secret anyone who can reach the port could feed the detectors forged entries. "
            "Give --access-log-secret-file FILE (and the same file to `authz envoy-config "
            "--access-log-secret-file`), bind 127.0.0.1, or add "
            "--access-log-insecure-trust-network if only Envoy can reach this address"
        )


class AccessLogServicer:
    """``StreamAccessLogs``: every HTTP entry of every message goes to the feed."""

    def __init__(
        self, feed: ResponseFeed, *, metrics: Metrics | None = None, secret: str | None = None
    ) -> None:
        self.feed = feed
        self._secret = secret.encode() if secret is not None else None
        metrics = metrics if metrics is not None else MemoryMetrics()
        self._refused = metrics.counter(
            "authz_feed_refused_streams_total",
            "access-log streams refused: no or a wrong transport secret",
        ).labels()
        self._streams = metrics.gauge(
            "authz_feed_streams", "Envoy access-log streams connected now"
        ).labels()
        self._invalid = metrics.counter(
            "authz_feed_invalid_messages_total",
            "access-log stream messages that were not a StreamAccessLogsMessage",
        ).labels()
        self._log_invalid = RateLimitedLog(log)

    def _trusted(self, context: Any) -> bool:
        if self._secret is None:
            return True
        for key, value in context.invocation_metadata() or ():
            if key == SECRET_HEADER:
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._secret)
        return False

    async def StreamAccessLogs(self, messages: AsyncIterator[Any], context: Any) -> bytes:
        if not self._trusted(context):
            self._refused.inc()
            self._log_invalid(
                "access-log stream from %s refused: no or a wrong secret", context.peer()
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "transport secret required")
        self._streams.inc()
        offer = self.feed.offer
        try:
            async for message in messages:
                if message is None:
                    self._invalid.inc()
                    self._log_invalid(
                        "access-log stream from %s: a message did not parse", context.peer()
                    )
                    continue
                if message.HasField("identifier"):
                    ident = message.identifier
                    log.info(
                        "access-log stream from %s: node %s, log %s",
                        context.peer(),
                        ident.node.id or "?",
                        ident.log_name or "?",
                    )
                if message.HasField("http_logs"):
                    offer(message.http_logs.log_entry)
        finally:
            self._streams.dec()
        return _EMPTY_RESPONSE

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_unary_rpc_method_handler(
            self.StreamAccessLogs, request_deserializer=_parse, response_serializer=_encoded
        )
        return grpc.method_handlers_generic_handler(
            ACCESS_LOG_SERVICE, {"StreamAccessLogs": method}
        )


class AccessLogServer:
    """A grpc.aio server with the access-log service alone; a runtime."""

    name = "feedback.als_server"

    def __init__(
        self,
        address: str,
        feed: ResponseFeed,
        *,
        metrics: Metrics | None = None,
        reuse_port: bool = False,
        secret: str | None = None,
    ) -> None:
        self.address = address
        self.servicer = AccessLogServicer(feed, metrics=metrics, secret=secret)
        self.reuse_port = reuse_port
        self.server: grpc.aio.Server | None = None
        #: the bound port (0 until started)
        self.port = 0

    async def start(self) -> None:
        if self.server is not None:
            return
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 1 if self.reuse_port else 0), *SERVER_OPTIONS]
        )
        server.add_generic_rpc_handlers((self.servicer.handler(),))
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError:
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {self.address} (access log)")
        await server.start()
        self.server, self.port = server, port
        log.info("access-log service on port %d", port)

    async def aclose(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            with contextlib.suppress(Exception):
                await server.stop(STOP_GRACE)


def serve_access_log(
    shared: Any, address: str, *, reuse_port: bool = False, secret: str | None = None
) -> AccessLogServer:
    """Register the process's feed (publishing on its hub) and an access-log server on
    ``address`` in ``shared.runtimes`` (started with them; nothing is bound now)."""
    feed = ResponseFeed.of(shared, to_observation)
    server = AccessLogServer(
        address, feed, metrics=shared.metrics, reuse_port=reuse_port, secret=secret
    )
    shared.runtimes.add(server)
    return server


def access_log_runtime(shared: Any, options: Any) -> AccessLogServer:
    """The access-log server ``authz serve`` options ask for (an
    :class:`~authz.serve_options.ServeOptions`), registered in ``shared.runtimes``.
    Raises TransportConfigError for a secret file that cannot be used."""
    from authz.transport.envoy_http import read_secret_file
    from authz.transport.http_wire import TransportConfigError

    secret = None
    if options.access_log_secret_file is not None:
        try:
            secret = read_secret_file(options.access_log_secret_file)
        except ValueError as exc:
            raise TransportConfigError(f"--access-log-secret-file {exc}") from None
    return serve_access_log(
        shared, options.access_log_grpc, reuse_port=options.reuse_port, secret=secret
    )
