"""The framework floor: a grpc.aio Authorization servicer that answers OK to everything.

Same server options and event loop as ``authz serve``; no engine, no translation.

    python bench/bare_servicer.py PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz.server import run_loop
from authz.transport.grpc_server import SERVER_OPTIONS

_OK = external_auth_pb2.CheckResponse()
_OK.status.code = 0
_OK.ok_response.SetInParent()


class Bare(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:
        return _OK


async def serve(port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Bare(), server)
    checks = health.aio.HealthServicer()  # for the readiness probe, as authz has
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    run_loop(serve(int(sys.argv[1])))
