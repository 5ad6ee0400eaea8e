"""End to end: rate limits and load shedding through a real Envoy.

- a limited request gets 429 with Retry-After, RateLimit-Policy and RateLimit;
  allowed ones carry the RateLimit fields to the client and the remaining quota
  to the upstream;
- under an operator's overload signal, background routes are shed (503 with
  Retry-After) while critical ones keep flowing;
- a public route with rate limits is checked by authz (Envoy sends it there),
  and a rotating X-Forwarded-For does not evade its per-address rule.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

KEY = "e2e-rate-key-0123456789abcdef"


POLICY = """\
mode: enforce
realm: shop
providers:
  keys:
    type: api_key
    keys:
      - {{id: shop-app, sha256: {digest}, owner: shop, scopes: [shop], expires: "2999-01-01"}}
rate_limits:
  stores:
    shared: {{type: redis, url: "{redis}", timeout: 250ms}}
  overload:
    signal_file: {signal}
    retry_after: 7s
routes:
  - name: checkout
    path: /checkout
    methods: [POST]
    providers: [keys]
    priority: critical
  - name: search
    path: /search
    methods: [GET]
    providers: [keys]
    rate_limits:
      - {{name: search-per-key, rate: 3/h, key: [api_key], store: shared}}
  - name: sync
    path: /sync/{{rest=**}}
    methods: [POST]
    providers: [keys]
    priority: background
  - name: status
    path: /status
    methods: [GET]
    public: true
    rate_limits:
      - {{name: status-per-address, rate: 5/h, key: [client_address]}}
"""


class Env:
    def __init__(self, stack: LocalStack, signal: Path) -> None:
        self.stack = stack
        self.signal = signal

    def call(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        body = b"{}" if method == "POST" else None
        return send(method, self.stack.base_url + path, headers, body)

    def keyed(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        return self.call(method, path, {"x-api-key": KEY})


@pytest.fixture(scope="module", params=["grpc", "http"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The stack once per transport Envoy can use to call the service."""
    tmp = tmp_path_factory.mktemp(f"e2e-ratelimit-{request.param}")
    redis = RedisServer(tmp / "redis").start()
    signal = tmp / "overload"
    policy = tmp / "policy.yaml"
    policy.write_text(
        POLICY.format(
            digest=hashlib.sha256(KEY.encode()).hexdigest(), redis=redis.url, signal=signal
        )
    )
    stack = LocalStack(policy=policy, state_dir=tmp / "state", transport=request.param)
    try:
        stack.start()
        yield Env(stack, signal)
    finally:
        stack.stop()
        redis.stop()


def test_429_with_retry_after_and_ratelimit_fields(env: Env) -> None:
    allowed = [env.keyed("GET", "/search") for _ in range(3)]
    assert [status for status, _, _ in allowed] == [200, 200, 200]
    _, headers, body = allowed[0]
    assert headers["ratelimit-policy"] == '"search-per-key";q=3;w=3600'
    assert headers["ratelimit"] == '"search-per-key";r=2;t=1200'
    seen = json.loads(body)["headers"]  # what the upstream received
    assert seen["x-authz-ratelimit"] == '"search-per-key";r=2;t=1200'
    assert allowed[2][1]["ratelimit"].startswith('"search-per-key";r=0;')

    status, headers, body = env.keyed("GET", "/search")
    assert status == 429
    assert json.loads(body)["error"] == "rate_limited"
    assert headers["content-type"] == "application/json"
    assert 1000 <= int(headers["retry-after"]) <= 1200  # one token every 20 minutes
    assert headers["ratelimit-policy"] == '"search-per-key";q=3;w=3600'
    assert headers["ratelimit"].startswith('"search-per-key";r=0;t=')
    # a client-sent quota header never reaches the upstream
    status, _, body = env.call("POST", "/checkout", {"x-api-key": KEY, "x-authz-ratelimit": "r=9"})
    assert status == 200
    assert "x-authz-ratelimit" not in json.loads(body)["headers"]


def wait_for(env: Env, path: str, method: str, status: int) -> None:
    deadline = time.monotonic() + 10
    while env.keyed(method, path)[0] != status:
        assert time.monotonic() < deadline, f"{method} {path} never answered {status}"
        time.sleep(0.1)


def test_background_is_shed_while_critical_flows(env: Env) -> None:
    assert env.keyed("POST", "/sync/orders")[0] == 200
    env.signal.write_text("background\n")
    try:
        wait_for(env, "/sync/orders", "POST", 503)
        status, headers, body = env.keyed("POST", "/sync/orders")
        assert (status, json.loads(body)["error"]) == (503, "overloaded")
        assert headers["retry-after"] == "7"
        assert [env.keyed("POST", "/checkout")[0] for _ in range(5)] == [200] * 5
        env.signal.write_text("normal\n")  # shed normal routes too
        status, _, body = env.keyed("GET", "/search")
        deadline = time.monotonic() + 10
        while json.loads(body)["error"] != "overloaded":  # search is limited or shed
            assert time.monotonic() < deadline
            time.sleep(0.1)
            status, _, body = env.keyed("GET", "/search")
        assert status == 503
        assert env.keyed("POST", "/checkout")[0] == 200
    finally:
        env.signal.unlink()
    wait_for(env, "/sync/orders", "POST", 200)


def test_public_route_limits_by_address_despite_rotating_forwarded_for(env: Env) -> None:
    statuses = [
        env.call("GET", "/status", {"x-forwarded-for": f"10.0.{i}.1"})[0] for i in range(12)
    ]
    assert statuses == [200] * 5 + [429] * 7
