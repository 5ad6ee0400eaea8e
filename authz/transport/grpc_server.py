"""The ext_authz v3 gRPC transport: Authorization/Check, health and reflection.

The control plane (authz.v1.Admin) is not here: it has a port of its own, with
authentication (:mod:`authz.control`)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authz.engine import PolicyEngine
from authz.errors import InternalError
from authz.model import Decision, Request
from authz.transport.envoy_grpc import (
    CheckRequest,
    encode_check_response,
    to_request,
)
from authz.transport.tls import CertificateReloader, TlsFiles

log = logging.getLogger("authz.grpc")

AUTHORIZATION_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name

_INTERNAL = encode_check_response(
    Decision(
        allowed=False,
        status=InternalError.status,
        reason=InternalError.reason,
        decision_id="",
        response_headers=(("content-type", "application/json"),),
        body='{"error": "internal_error", "request_id": ""}',
        metadata={"reason": InternalError.reason},
    )
)


#: What a message that does not parse as a CheckRequest is told (INVALID_ARGUMENT).
NOT_A_CHECK_REQUEST = "not a CheckRequest"
#: At most one log line per this many seconds about such messages.
INVALID_LOG_INTERVAL = 10.0


class RateLimitedLog:
    """Logs one warning line at most every ``interval`` seconds, with the number of
    events not logged since the last line: a flood of bad calls costs one line per
    interval, not one traceback per call."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = INVALID_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._suppressed = 0

    def __call__(self, message: str, *args: object) -> None:
        """Log ``message % args`` (one line), unless a line was logged too recently."""
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self._interval
        suppressed, self._suppressed = self._suppressed, 0
        self._log.warning(
            message + "; %d more since the last line (at most one line every %gs)",
            *args,
            suppressed,
            self._interval,
        )


def _parse(raw: bytes) -> external_auth_pb2.CheckRequest | None:
    """The request deserializer: None for bytes that are not a CheckRequest (bad wire
    format, invalid UTF-8 in a string, nesting past protobuf's recursion limit), so
    that gRPC never sees an exception (it would answer UNKNOWN and log a traceback)."""
    try:
        return CheckRequest.FromString(raw)
    except Exception:  # DecodeError in practice; nothing else may escape to gRPC
        return None


class AuthorizationServicer:
    """Check never raises: anything unexpected becomes an internal_error deny, and a
    message that is not a CheckRequest gets INVALID_ARGUMENT (counted in
    ``invalid_requests``, logged by a :class:`RateLimitedLog`).

    It answers with the CheckResponse already encoded (see
    :func:`~authz.transport.envoy_grpc.encode_check_response`), so the method is
    registered with a pass-through response serializer.
    """

    def __init__(
        self, engine: PolicyEngine, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        #: Calls whose message was not a CheckRequest.
        self._invalid = engine.metrics.counter(
            "authz_grpc_invalid_requests_total", "gRPC calls whose message was not a CheckRequest"
        ).labels()
        self._log_invalid = RateLimitedLog(log, clock=clock)

    @property
    def invalid_requests(self) -> int:
        """Calls whose message was not a CheckRequest (from the metrics)."""
        return int(getattr(self._invalid, "value", 0))

    async def Check(self, request: external_auth_pb2.CheckRequest | None, context: Any) -> bytes:
        if request is None:
            self._invalid.inc()
            self._log_invalid(
                "gRPC Check from %s: not a CheckRequest, answered INVALID_ARGUMENT (%d so far)",
                context.peer(),
                self.invalid_requests,
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, NOT_A_CHECK_REQUEST)
            return b""  # not reached: abort raises
        try:
            checked = to_request(request)
            if self._engine.tracer is not None:  # Envoy's span is the call's parent
                checked = with_call_trace(checked, context.invocation_metadata())
            return encode_check_response(await self._engine.check(checked))
        except Exception:
            log.exception("Check failed outside the engine")
            return _INTERNAL

    def handler(self) -> grpc.GenericRpcHandler:
        check = grpc.unary_unary_rpc_method_handler(
            self.Check,
            request_deserializer=_parse,
            response_serializer=_encoded,
        )
        return grpc.method_handlers_generic_handler(AUTHORIZATION_SERVICE, {"Check": check})


#: the call metadata keys of a trace context (W3C, B3 single and multi)
TRACE_KEYS = frozenset(("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                        "x-b3-sampled", "x-b3-flags", "x-b3-parentspanid"))  # fmt: skip


def with_call_trace(request: Request, metadata: Any) -> Request:
    """``request`` with the trace context of the call's metadata, if it has one."""
    trace = {k: v for k, v in metadata or () if k in TRACE_KEYS and isinstance(v, str)}
    return dataclasses.replace(request, trace=trace) if trace else request


def _encoded(response: bytes) -> bytes:
    return response


#: The grpc.aio server's options (also used by the benchmark's bare servicer).
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


class GrpcTransport:
    """A grpc.aio server with the Authorization, Health and Reflection services."""

    def __init__(
        self,
        engine: PolicyEngine,
        address: str,
        *,
        reuse_port: bool = False,
        clock: Callable[[], float] = time.monotonic,
        tls: TlsFiles | None = None,
    ) -> None:
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            options=[("grpc.so_reuseport", 1 if reuse_port else 0), *SERVER_OPTIONS]
        )
        self.authorization = AuthorizationServicer(engine, clock=clock)
        self.server.add_generic_rpc_handlers((self.authorization.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                AUTHORIZATION_SERVICE,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        #: the listener's certificate, reread when its files change (None: plaintext)
        self.tls = CertificateReloader(tls) if tls is not None else None
        if self.tls is not None:
            self.port = self.server.add_secure_port(address, self.tls.grpc_credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", AUTHORIZATION_SERVICE):
            await self.health.set(name, status)

    async def set_health(self, name: str, serving: bool) -> None:
        """Health of one named part (e.g. ``authz.decision_log``), apart from the overall."""
        await self.health.set(
            name,
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING,
        )

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)
