"""RFC 7662 introspection end to end through a real Envoy, on both transports, with
a real introspection endpoint: up (active, inactive) and down (503, fail closed)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from tests.introspection_server import IntrospectionServer

pytestmark = pytest.mark.e2e

POLICY = """\
providers:
  opaque: {type: introspection, endpoint: "@URL@", client_id: authz, client_secret_file: secret, timeout: 500ms, cache_ttl: 1s}
routes:
  - {name: orders, path: /v1/orders, methods: [GET], providers: [opaque], scopes: [orders:read]}
"""


@pytest.fixture(scope="module", params=["grpc", "http"])
def env(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[LocalStack, IntrospectionServer]]:
    tmp = tmp_path_factory.mktemp(f"introspect-{request.param}")
    server = IntrospectionServer().start()
    (tmp / "secret").write_text("s3cret\n")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.replace("@URL@", server.url))
    stack = LocalStack(policy=policy, state_dir=Path(tmp / "state"), transport=request.param)
    try:
        stack.start()
        yield stack, server
    finally:
        stack.stop()
        server.stop()


def call(stack: LocalStack, token: str) -> tuple[int, str, dict[str, str]]:
    status, headers, body = send(
        "GET", stack.base_url + "/v1/orders", {"authorization": f"Bearer {token}"}
    )
    reason = json.loads(body).get("error", "") if status != 200 else ""
    return status, reason, (json.loads(body)["headers"] if status == 200 else headers)


def test_endpoint_up_then_down(env: tuple[LocalStack, IntrospectionServer]) -> None:
    stack, server = env
    server.tokens["opaque-1"] = {
        "active": True, "sub": "alice", "scope": "orders:read", "exp": time.time() + 60,
    }  # fmt: skip
    server.tokens["opaque-2"] = {"active": True, "sub": "bob", "scope": "other"}
    status, _, upstream = call(stack, "opaque-1")
    assert status == 200 and upstream["x-authz-subject"] == "alice"
    assert call(stack, "opaque-2")[:2] == (403, "insufficient_scope")
    assert call(stack, "nobody-knows-me")[:2] == (401, "token_inactive")
    # the endpoint goes down: a cached answer still serves until its TTL, then 503
    server.stop()
    assert call(stack, "opaque-1")[0] == 200
    time.sleep(1.1)
    assert call(stack, "opaque-1")[:2] == (503, "introspection_unavailable")
    assert call(stack, "never-seen")[:2] == (503, "introspection_unavailable")
