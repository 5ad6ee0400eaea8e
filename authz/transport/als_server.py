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
"""

from __future__ import annotations

import contextlib
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


class AccessLogServicer:
    """``StreamAccessLogs``: every HTTP entry of every message goes to the feed."""

    def __init__(self, feed: ResponseFeed, *, metrics: Metrics | None = None) -> None:
        self.feed = feed
        metrics = metrics if metrics is not None else MemoryMetrics()
        self._streams = metrics.gauge(
            "authz_feed_streams", "Envoy access-log streams connected now"
        ).labels()
        self._invalid = metrics.counter(
            "authz_feed_invalid_messages_total",
            "access-log stream messages that were not a StreamAccessLogsMessage",
        ).labels()
        self._log_invalid = RateLimitedLog(log)

    async def StreamAccessLogs(self, messages: AsyncIterator[Any], context: Any) -> bytes:
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
    ) -> None:
        self.address = address
        self.servicer = AccessLogServicer(feed, metrics=metrics)
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
        port = server.add_insecure_port(self.address)
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


def serve_access_log(shared: Any, address: str, *, reuse_port: bool = False) -> AccessLogServer:
    """Register the process's feed (publishing on its hub) and an access-log server on
    ``address`` in ``shared.runtimes`` (started with them; nothing is bound now)."""
    feed = ResponseFeed.of(shared, to_observation)
    server = AccessLogServer(address, feed, metrics=shared.metrics, reuse_port=reuse_port)
    shared.runtimes.add(server)
    return server
