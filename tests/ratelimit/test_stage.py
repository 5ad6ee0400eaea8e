"""Rate limits and shedding in the engine: the decisions, their headers, their order.

The in-process store runs on an injected clock; no test waits on time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Decision, Request
from authz.policy.config import RouteConfig
from authz.policy.loader import load_policy
from authz.ratelimit.runtime import RateLimitRuntime
from authz.ratelimit.stage import RATE_LIMIT_STAGES
from authz.stages import Check, Context, Load, Shared

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


BASE = f"""\
providers:
  keys:
    type: api_key
    keys:
      - {{id: a, sha256: {sha(KEY_A)}, owner: team-a, scopes: [r], expires: "2999-01-01"}}
      - {{id: b, sha256: {sha(KEY_B)}, owner: team-b, scopes: [r], expires: "2999-01-01"}}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class Env:
    def __init__(self, tmp_path: Path, policy: str, stages: list[object] | None = None) -> None:
        (tmp_path / "p.yaml").write_text(BASE + policy)
        self.config = load_policy(tmp_path / "p.yaml")
        self.shared = Shared()
        self.clock = Clock()
        runtime = RateLimitRuntime.of(self.shared)
        runtime.memory.clock = self.clock
        runtime.overload.clock = self.clock
        self.runtime = runtime
        self.engine = PolicyEngine(
            CompiledPolicy(self.config, shared=self.shared, stages=stages)  # type: ignore[arg-type]
        )

    async def get(
        self, path: str, *, key: str | None = None, source: str = "192.0.2.1", **headers: str
    ) -> Decision:
        if key is not None:
            headers["x-api-key"] = key
        return await self.engine.check(
            Request(method="GET", path=path, headers=headers, source_address=source)
        )


def headers(decision: Decision) -> dict[str, str]:
    return dict(decision.response_headers)


def upstream(decision: Decision) -> dict[str, str]:
    return dict(decision.upstream_headers)


async def test_429_with_retry_after_and_ratelimit_headers(tmp_path: Path) -> None:
    env = Env(
        tmp_path,
        """
routes:
  - name: orders
    path: /v1/orders/{id}
    methods: [GET]
    providers: [keys]
    rate_limits:
      - {name: per-key, rate: 2/m, key: [api_key]}
""",
    )
    first = await env.get("/v1/orders/1", key=KEY_A)
    assert first.allowed
    assert headers(first)["ratelimit-policy"] == '"per-key";q=2;w=60'
    assert headers(first)["ratelimit"] == '"per-key";r=1;t=30'
    assert upstream(first)["x-authz-ratelimit"] == '"per-key";r=1;t=30'
    assert "x-authz-ratelimit" not in first.remove_upstream_headers
    env.clock.now += 10
    second = await env.get("/v1/orders/2", key=KEY_A)
    assert headers(second)["ratelimit"] == '"per-key";r=0;t=50'
    third = await env.get("/v1/orders/3", key=KEY_A)
    assert (third.allowed, third.status, third.reason) == (False, 429, "rate_limited")
    assert json.loads(third.body) == {"error": "rate_limited", "request_id": ""}
    got = headers(third)
    assert got["retry-after"] == "20"  # one token every 30 s; the first was taken 10 s ago
    assert got["ratelimit-policy"] == '"per-key";q=2;w=60'
    assert got["ratelimit"] == '"per-key";r=0;t=50'
    other_key = await env.get("/v1/orders/3", key=KEY_B)
    assert other_key.allowed  # its own bucket
    env.clock.now += 20
    assert (await env.get("/v1/orders/4", key=KEY_A)).allowed


async def test_path_variants_share_one_bucket(tmp_path: Path) -> None:
    env = Env(
        tmp_path,
        """
rate_limits:
  rules:
    - {name: per-route, rate: 3/h, key: [route, client_address]}
routes:
  - {name: orders, path: "/v1/orders/{id}", methods: [GET], public: true}
""",
    )
    variants = ["/v1/orders/1", "/v1//orders/./2", "/v1/%6Frders/3", "/v1/orders/x/../4"]
    decisions = [await env.get(path) for path in variants]
    assert [d.route for d in decisions] == ["orders"] * 4
    assert [d.status for d in decisions] == [200, 200, 200, 429]


async def test_per_address_rule_runs_before_identity(tmp_path: Path) -> None:
    env = Env(
        tmp_path,
        """
rate_limits:
  rules:
    - {name: per-address, rate: 3/h, key: [client_address]}
routes:
  - {name: orders, path: /v1/orders, methods: [GET], providers: [keys]}
""",
    )
    bad = [await env.get("/v1/orders", key=f"guess-{i}") for i in range(5)]
    # the first three reach the key check; the rest are throttled before it
    assert [d.reason for d in bad] == ["api_key_unknown"] * 3 + ["rate_limited"] * 2
    assert (await env.get("/v1/orders", key=KEY_A)).reason == "rate_limited"
    # undeclared paths are throttled too (the rule runs before routing)
    assert (await env.get("/nowhere")).reason == "rate_limited"
    assert (await env.get("/nowhere", source="192.0.2.2")).reason == "undeclared_route"


async def test_rotating_forwarded_for_does_not_evade(tmp_path: Path) -> None:
    env = Env(
        tmp_path,
        """
rate_limits:
  trusted_hops: 1
  rules:
    - {name: per-address, rate: 5/h, key: [client_address]}
routes:
  - {name: open, path: /open, methods: [GET], public: true}
""",
    )
    statuses = []
    for i in range(20):
        forwarded = f"10.{i}.{i}.{i}, 198.51.100.7, 192.0.2.1"  # spoofed, client, the LB
        statuses.append((await env.get("/open", **{"x-forwarded-for": forwarded})).status)
    assert statuses.count(200) == 5
    # another client behind the same load balancer has its own bucket
    other = await env.get("/open", **{"x-forwarded-for": "198.51.100.8, 192.0.2.1"})
    assert other.status == 200


async def test_per_identity_rule_runs_after_authentication(tmp_path: Path) -> None:
    env = Env(
        tmp_path,
        """
routes:
  - name: orders
    path: /v1/orders
    methods: [GET]
    providers: [keys]
    rate_limits:
      - {name: burst, rate: 20/s, burst: 2, key: [subject]}
      - {name: hourly, rate: 5000/h, key: [subject]}
""",
    )
    a = [await env.get("/v1/orders", key=KEY_A) for _ in range(3)]
    assert [d.status for d in a] == [200, 200, 429]
    assert headers(a[0])["ratelimit-policy"] == '"burst";q=2;w=1, "hourly";q=5000;w=3600'
    assert headers(a[0])["ratelimit"] == '"burst";r=1;t=1, "hourly";r=4999;t=1'
    assert headers(a[2])["ratelimit"] == '"burst";r=0;t=1'
    # the denied request did not use the hourly quota (all or nothing): three taken
    # (0.72 s each), one second refilled 1.39 -> 4998 left, not 4997
    env.clock.now += 1
    assert headers(await env.get("/v1/orders", key=KEY_A))["ratelimit"].endswith(
        '"hourly";r=4998;t=2'
    )
    assert (await env.get("/v1/orders", key=KEY_B)).allowed
    # no credential: 401 before any per-identity rule
    assert (await env.get("/v1/orders")).reason == "missing_credential"


async def test_shadow_rule_counts_without_limiting(tmp_path: Path) -> None:
    env = Env(
        tmp_path,
        """
routes:
  - name: open
    path: /open
    methods: [GET]
    public: true
    rate_limits:
      - {name: trial, rate: 2/h, key: [client_address], shadow: true}
""",
    )
    decisions = [await env.get("/open") for _ in range(5)]
    assert all(d.allowed and d.reason == "allowed" for d in decisions)
    assert all("ratelimit" not in headers(d) for d in decisions)
    counters = env.runtime.stats()["rules"]["trial"]
    assert counters["shadow_limited"] == 3
    assert counters["limited"] == 0


async def test_monitor_route_lets_a_limited_request_through(tmp_path: Path) -> None:
    env = Env(
        tmp_path,
        """
routes:
  - name: open
    path: /open
    methods: [GET]
    public: true
    mode: monitor
    rate_limits:
      - {name: tight, rate: 1/h}
""",
    )
    await env.get("/open")
    second = await env.get("/open")
    assert (second.allowed, second.monitored, second.reason, second.status) == (
        True,
        True,
        "rate_limited",
        429,
    )


async def test_concurrency_cap_with_leases(tmp_path: Path) -> None:
    env = Env(
        tmp_path,
        """
routes:
  - name: export
    path: /export
    methods: [GET]
    providers: [keys]
    rate_limits:
      - {name: export-slots, concurrency: 2, lease: 30s}
""",
    )
    got = [await env.get("/export", key=KEY_A) for _ in range(3)]
    assert [d.status for d in got] == [200, 200, 429]
    assert got[2].reason == "concurrency_limited"
    assert headers(got[2])["retry-after"] == "30"
    assert headers(got[0])["ratelimit-policy"] == '"export-slots";q=2;w=30'
    assert headers(got[1])["ratelimit"] == '"export-slots";r=0;t=30'
    # a request denied before the cap (401) never takes a lease
    env.clock.now += 30
    assert (await env.get("/export")).reason == "missing_credential"
    assert [(await env.get("/export", key=KEY_B)).status for _ in range(3)] == [200, 200, 429]


class Gate:
    """A post stage that holds requests to /slow until released: decisions in flight."""

    name = "gate"
    phase = "post"

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.waiting = 0

    def build(self, load: Load, route: RouteConfig | None) -> Check | None:
        if route is None or route.name != "slow":
            return None

        async def hold(ctx: Context) -> None:
            self.waiting += 1
            await self.open.wait()

        return hold


SHED_ROUTES = """
routes:
  - {name: slow, path: /slow, methods: [GET], providers: [keys], priority: critical}
  - {name: checkout, path: /checkout, methods: [GET], providers: [keys], priority: critical}
  - {name: browse, path: /browse, methods: [GET], providers: [keys]}
  - {name: sync, path: /sync, methods: [GET], providers: [keys], priority: background}
"""


async def test_lower_classes_are_shed_first_by_decisions_in_flight(tmp_path: Path) -> None:
    gate = Gate()
    env = Env(
        tmp_path,
        "rate_limits:\n  overload: {background_at: 4, normal_at: 8, retry_after: 3s}\n"
        + SHED_ROUTES,
        stages=[*RATE_LIMIT_STAGES, gate],
    )

    async def statuses() -> dict[str, int]:
        return {p: (await env.get(p, key=KEY_A)).status for p in ("/checkout", "/browse", "/sync")}

    async def hold(n: int) -> list[asyncio.Task[Decision]]:
        tasks = [asyncio.create_task(env.get("/slow", key=KEY_A)) for _ in range(n)]
        while gate.waiting < len(tasks) + held:
            await asyncio.sleep(0)
        return tasks

    held = 0
    assert await statuses() == {"/checkout": 200, "/browse": 200, "/sync": 200}
    tasks = await hold(4)  # 4 in flight, +1 for the request itself: over background_at
    held = 4
    assert await statuses() == {"/checkout": 200, "/browse": 200, "/sync": 503}
    tasks += await hold(4)  # 8 in flight: over normal_at too
    shed = await env.get("/browse", key=KEY_A)
    assert (shed.status, shed.reason, headers(shed)["retry-after"]) == (503, "overloaded", "3")
    assert await statuses() == {"/checkout": 200, "/browse": 503, "/sync": 503}
    gate.open.set()
    assert all(d.allowed for d in await asyncio.gather(*tasks))
    assert await statuses() == {"/checkout": 200, "/browse": 200, "/sync": 200}
    assert env.runtime.stats()["overload"] == {"shed_background": 2, "shed_normal": 2}


async def test_operator_signal_file_sheds(tmp_path: Path) -> None:
    signal = tmp_path / "overload"
    env = Env(tmp_path, f"rate_limits:\n  overload: {{signal_file: {signal}}}\n" + SHED_ROUTES)

    async def statuses() -> list[int]:
        env.clock.now += 1  # past the signal file's check interval
        return [(await env.get(p, key=KEY_A)).status for p in ("/checkout", "/browse", "/sync")]

    assert await statuses() == [200, 200, 200]
    signal.write_text("")
    assert await statuses() == [200, 200, 503]
    signal.write_text("normal\n")
    assert await statuses() == [200, 503, 503]
    signal.unlink()
    assert await statuses() == [200, 200, 200]


async def test_buckets_survive_a_reload(tmp_path: Path) -> None:
    policy = """
routes:
  - name: open
    path: /open
    methods: [GET]
    public: true
    rate_limits:
      - {name: tight, rate: 2/h, key: [client_address]}
"""
    env = Env(tmp_path, policy)
    assert [(await env.get("/open")).status for _ in range(2)] == [200, 200]
    (tmp_path / "p.yaml").write_text(BASE + policy + "# changed\n")
    env.engine.swap(CompiledPolicy(load_policy(tmp_path / "p.yaml"), shared=env.shared))
    assert (await env.get("/open")).status == 429


async def test_response_headers_can_be_turned_off(tmp_path: Path) -> None:
    env = Env(
        tmp_path,
        """
rate_limits:
  response_headers: false
routes:
  - name: open
    path: /open
    methods: [GET]
    public: true
    rate_limits: [{name: tight, rate: 1/h}]
""",
    )
    ok = await env.get("/open")
    assert "ratelimit" not in headers(ok)
    assert upstream(ok)["x-authz-ratelimit"] == '"tight";r=0;t=3600'
    denied = await env.get("/open")
    assert set(headers(denied)) == {"content-type", "retry-after"}


async def test_spoofed_upstream_quota_header_is_removed(tmp_path: Path) -> None:
    env = Env(
        tmp_path,
        "routes:\n  - {name: orders, path: /v1/orders, methods: [GET], providers: [keys]}\n",
    )
    ok = await env.get("/v1/orders", key=KEY_A, **{"x-authz-ratelimit": '"x";r=999'})
    assert "x-authz-ratelimit" in ok.remove_upstream_headers
    assert "x-authz-ratelimit" not in upstream(ok)


@pytest.mark.parametrize("on_error", ["deny", "local"])
async def test_unreachable_redis_fails_closed_or_limits_locally(
    tmp_path: Path, on_error: str
) -> None:
    from authz.demo.stack import free_port

    env = Env(
        tmp_path,
        f"""
rate_limits:
  stores:
    shared: {{type: redis, url: "redis://127.0.0.1:{free_port()}/0", timeout: 200ms}}
routes:
  - name: open
    path: /open
    methods: [GET]
    public: true
    rate_limits:
      - {{name: shared-rule, rate: 2/h, store: shared, on_store_error: {on_error}}}
""",
    )
    got = [await env.get("/open") for _ in range(3)]
    counters = env.runtime.stats()["rules"]["shared-rule"]
    if on_error == "deny":
        assert [d.reason for d in got] == ["rate_limit_unavailable"] * 3
        assert got[0].status == 503
        assert headers(got[0])["retry-after"] == "1"
        assert counters["unavailable"] == 3
    else:
        assert [d.status for d in got] == [200, 200, 429]  # the same limit, in this process
        assert counters["fell_back"] == 3
    assert env.runtime.stats()["redis"]["shared"]["errors"] >= 1
    await env.runtime.aclose()
