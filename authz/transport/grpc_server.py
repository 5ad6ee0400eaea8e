"""The ext_authz v3 gRPC transport: Authorization/Check, health, reflection and our
control plane (authz.v1.Admin)."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authz import admin
from authz.engine import PolicyEngine
from authz.errors import InternalError
from authz.model import Decision
from authz.transport.envoy_grpc import (
    CheckRequest,
    encode_check_response,
    to_request,
)

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


class AuthorizationServicer:
    """Check never raises: anything unexpected becomes an internal_error deny.

    It answers with the CheckResponse already encoded (see
    :func:`~authz.transport.envoy_grpc.encode_check_response`), so the method is
    registered with a pass-through response serializer.
    """

    def __init__(self, engine: PolicyEngine) -> None:
        self._engine = engine

    async def Check(self, request: external_auth_pb2.CheckRequest, context: Any) -> bytes:
        try:
            return encode_check_response(await self._engine.check(to_request(request)))
        except Exception:
            log.exception("Check failed outside the engine")
            return _INTERNAL

    def handler(self) -> grpc.GenericRpcHandler:
        check = grpc.unary_unary_rpc_method_handler(
            self.Check,
            request_deserializer=CheckRequest.FromString,
            response_serializer=_encoded,
        )
        return grpc.method_handlers_generic_handler(AUTHORIZATION_SERVICE, {"Check": check})


def _encoded(response: bytes) -> bytes:
    return response


#: The grpc.aio server's options (also used by the benchmark's bare servicer).
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


class GrpcTransport:
    """A grpc.aio server with the Authorization, Admin, Health and Reflection services."""

    def __init__(self, engine: PolicyEngine, address: str, *, reuse_port: bool = False) -> None:
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            options=[("grpc.so_reuseport", 1 if reuse_port else 0), *SERVER_OPTIONS]
        )
        self.server.add_generic_rpc_handlers((AuthorizationServicer(engine).handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        admin.add_to_server(engine, self.server)
        reflection.enable_server_reflection(
            (
                AUTHORIZATION_SERVICE,
                admin.ADMIN_SERVICE,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
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
