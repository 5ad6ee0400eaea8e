"""`authz serve` health follows its keys after start: an issuer down past
``jwks_stale_ttl`` turns gRPC health and ``/healthz`` NOT_SERVING and fails even
cached tokens closed (503 ``jwks_unavailable``); the issuer's return brings both back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from grpc_health.v1 import health_pb2

from authz import devissuer
from authz.demo.stack import free_port
from authz.transport.envoy_http import CARRIER_STATUS, STATUS_HEADER
from tests.integration.test_service import _try_health, check, http_check, http_health, wait_for
from tests.support import ServiceProcess, jwt_policy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_goes_not_serving_while_keys_are_stale_and_comes_back(
    tmp_path: Path,
    issuer: devissuer.DevIssuerServer,
    start_service: Callable[..., ServiceProcess],
    mint: Callable[..., str],
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        jwt_policy(
            issuer.url,
            jwks_ttl="1s",
            jwks_refresh_interval="1s",
            jwks_stale_ttl="3s",
            jwks_timeout="0.5s",
        )
    )
    port = free_port()
    svc = start_service(policy, "--http", f"127.0.0.1:{port}")
    wait_for(lambda: http_health(port) == 200)
    token = {"authorization": f"Bearer {mint()}"}
    ok = check(svc.address, path="/v1/orders/7", headers=token)
    assert ok.HasField("ok_response")  # verified once: cached from now on

    issuer.unavailable = True
    wait_for(lambda: _try_health(svc.address) == NOT_SERVING, 20)
    assert http_health(port) == 503
    denied = check(svc.address, path="/v1/orders/7", headers=token)
    assert denied.denied_response.status.code == 503
    assert json.loads(denied.denied_response.body)["error"] == "jwks_unavailable"
    status, headers, body = http_check(port, "/v1/orders/7", token)
    # 5xx travels to Envoy as 403 plus the real status in a header (see envoy_http).
    assert (status, headers[STATUS_HEADER]) == (CARRIER_STATUS, "503")
    assert json.loads(body)["error"] == "jwks_unavailable"

    issuer.unavailable = False
    wait_for(lambda: _try_health(svc.address) == SERVING, 20)
    assert http_health(port) == 200
    assert check(svc.address, path="/v1/orders/7", headers=token).HasField("ok_response")

    assert svc.stop() == 0
    log = svc.log()
    assert log.count("health NOT_SERVING: providers not ready (no usable keys): dev") == 1
    assert log.count("health SERVING again") == 1
