"""End to end: enforcement through a real Envoy, shared by two replicas through Redis.

- a token revoked on a second replica's control plane (sharing one Redis) is refused
  by the replica Envoy calls, within a bound: 401 credential_revoked with
  ``WWW-Authenticate: Bearer ... error="invalid_token"``;
- a step-up carries the RFC 9470 challenge through Envoy to the client (both
  transports), and a token with the required ``acr`` and a fresh ``auth_time`` passes;
- a blocked address is refused on an undeclared path too, and lifting ends it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authz import devissuer
from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from tests.redis_server import RedisServer
from tests.support import ServiceProcess

pytestmark = pytest.mark.e2e

POLICY = """\
mode: enforce
realm: orders
providers:
  dev: {{type: jwt, issuer: "{issuer}", audiences: [orders], algorithms: [ES256]}}
routes:
  - {{name: orders, path: /v1/orders, methods: [GET], providers: [dev], scopes: [orders:read]}}
  - {{name: status, path: /v1/status, methods: [GET], public: true}}
enforcement:
  public_routes: check
  store: {{redis: "{redis}", on_error: deny, timeout: 200ms}}
  step_up: {{acr_values: ["urn:example:mfa"], max_age: 300s}}
"""
STEP_UP = (
    'Bearer realm="orders", error="insufficient_user_authentication", '
    'error_description="A different authentication level is required", '
    'acr_values="urn:example:mfa", max_age=300'
)


class Env:
    def __init__(self, stack: LocalStack, replica: ServiceProcess, mint: Callable[..., str]):
        self.stack, self.replica, self.mint = stack, replica, mint

    def get(self, path: str, token: str = "") -> tuple[int, dict[str, str], bytes]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return send("GET", self.stack.base_url + path, headers)

    def cli(self, control: str, *argv: str, env: dict[str, str] | None = None) -> str:
        run = subprocess.run([sys.executable, "-m", "authz", *argv, "--control", control],
                             capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stderr
        return run.stdout


@pytest.fixture
def env(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_server: RedisServer,
    issuer: devissuer.DevIssuerServer,
    mint: Callable[..., str],
    start_service: Callable[..., ServiceProcess],
) -> Iterator[Env]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(issuer=issuer.url, redis=redis_server.url))
    transport = getattr(request, "param", "grpc")
    stack = LocalStack(policy=policy, state_dir=tmp_path / "state", transport=transport)
    try:
        stack.start()
        replica = start_service(policy)  # the second replica: its own port and control plane
        yield Env(stack, replica, mint)
    finally:
        stack.stop()


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "not within the bound"
        time.sleep(0.01)
    return time.monotonic() - started


def test_revoked_on_one_replica_denied_by_the_other(env: Env) -> None:
    token, other = env.mint("alice", "orders:read"), env.mint("bob", "orders:read")
    assert env.get("/v1/orders", token)[0] == 200
    env.cli(env.replica.control, "revoke", "add", "--token", token, "--note", "leaked",
            env=env.replica.env)  # fmt: skip
    took = until(lambda: env.get("/v1/orders", token)[0] == 401)
    print(f"\nrevoked on replica B, refused through Envoy by replica A after {took * 1000:.0f} ms")
    status, headers, body = env.get("/v1/orders", token)
    assert status == 401 and json.loads(body)["error"] == "credential_revoked"
    assert headers["www-authenticate"] == 'Bearer realm="orders", error="invalid_token"'
    assert env.get("/v1/orders", other)[0] == 200  # only that token
    # listed by the replica Envoy calls, with who revoked it
    listed = env.cli(f"127.0.0.1:{env.stack.control_port}", "revoke", "list", "--json")
    [entry] = json.loads(listed)["enforcements"]
    assert entry["target_kind"] == "token" and entry["by"].startswith("token:")
    assert entry["note"] == "leaked"


@pytest.mark.parametrize("env", ["grpc", "http"], indirect=True)
def test_step_up_carries_the_rfc_9470_challenge(env: Env) -> None:
    control = f"127.0.0.1:{env.stack.control_port}"
    env.cli(control, "blocks", "add", "--response", "step_up", "--subject", "carol")
    status, headers, body = env.get("/v1/orders", env.mint("carol", "orders:read"))
    assert status == 401 and json.loads(body)["error"] == "step_up_required"
    assert headers["www-authenticate"] == STEP_UP
    stepped = env.mint("carol", "orders:read",
                       extra_claims={"acr": "urn:example:mfa", "auth_time": int(time.time())})  # fmt: skip
    assert env.get("/v1/orders", stepped)[0] == 200


def test_blocked_address_refused_on_undeclared_and_public_paths(env: Env) -> None:
    # the tests' client reaches Envoy from 127.0.0.1: Envoy's source address
    control = env.replica.control
    assert env.get("/nowhere")[0] == 404
    assert env.get("/v1/status")[0] == 200
    env.cli(control, "blocks", "add", "--prefix", "127.0.0.0/24", env=env.replica.env)
    until(lambda: env.get("/nowhere")[0] == 403)
    status, _, body = env.get("/v1/orders", env.mint())
    assert status == 403 and json.loads(body)["error"] == "caller_blocked"
    # enforcement.public_routes: check: Envoy asks the service on public routes too
    status, _, body = env.get("/v1/status")
    assert status == 403 and json.loads(body)["error"] == "caller_blocked"
    env.cli(control, "blocks", "lift", "--prefix", "127.0.0.0/24", env=env.replica.env)
    until(lambda: env.get("/nowhere")[0] == 404)
    assert env.get("/v1/orders", env.mint())[0] == 200
    assert env.get("/v1/status")[0] == 200
