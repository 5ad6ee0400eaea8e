"""Rate limits against a real redis-server (started here, on a free port; no mocks).

- the Redis store agrees with the in-process one, atomically, across clients;
- batched counting stays within its documented over-admission bound;
- two `authz serve` processes share one quota;
- Redis stopped mid-run gives each rule's configured behaviour, and the service
  recovers by itself when Redis is back;
- a rotating X-Forwarded-For does not evade a per-address rule, and path variants
  of one endpoint share one bucket.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.policy.ratelimit_config import RedisStoreConfig
from authz.ratelimit.base import GCRA, LEASE, SYNC, Item, StoreUnavailable
from authz.ratelimit.batched import BatchedItem, BatchedStore
from authz.ratelimit.memory import MemoryStore
from authz.ratelimit.redis_store import FAILURES_TO_OPEN, RedisStore
from authz.transport.envoy_grpc import build_check_request
from tests.redis_server import RedisServer
from tests.support import ServiceProcess


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store(server: RedisServer, clock: Clock | None = None, **kw: Any) -> RedisStore:
    config = RedisStoreConfig(name="shared", url=server.url, **kw)
    return RedisStore(config, now=clock, monotonic=clock or time.monotonic)


# --------------------------------------------------------------------------- the store


async def test_redis_agrees_with_memory(redis_server: RedisServer) -> None:
    clock = Clock()
    redis, memory = store(redis_server, clock), MemoryStore(clock=clock)
    rng = random.Random(7)
    items = [
        Item("a", GCRA, 0.25, 3),
        Item("b", GCRA, 0.5, 2),
        Item("s", GCRA, 1.0, 1, shadow=True),
        Item("lease", LEASE, 2.0, 2),
    ]
    for _ in range(300):
        clock.now += rng.choice([0.0, 0.0, 0.01, 0.1, 0.3, 1.0])
        chosen = rng.sample(items, rng.randint(1, 3))
        got = await redis.acquire(chosen)
        want = memory.decide(chosen)
        assert [o.allowed for o in got] == [o.allowed for o in want]
        assert [o.remaining for o in got] == [o.remaining for o in want]
        for g, w in zip(got, want, strict=True):
            assert g.reset == pytest.approx(w.reset, abs=1e-5)
            assert g.retry_after == pytest.approx(w.retry_after, abs=1e-5)
    await redis.aclose()


async def test_release_gives_back(redis_server: RedisServer) -> None:
    clock = Clock()
    redis = store(redis_server, clock)
    rate, lease = Item("r", GCRA, 10.0, 1), Item("l", LEASE, 10.0, 1)
    assert [o.allowed for o in await redis.acquire([rate, lease])] == [True, True]
    assert [o.allowed for o in await redis.acquire([rate, lease])] == [False, False]
    await redis.release([rate, lease])
    assert [o.allowed for o in await redis.acquire([rate, lease])] == [True, True]
    await redis.aclose()


async def test_concurrent_clients_never_share_the_last_token(redis_server: RedisServer) -> None:
    clients = [store(redis_server, pool_size=4, timeout=2.0) for _ in range(4)]
    item = Item("hot", GCRA, 3600.0, 50)  # 50 at once, then one an hour
    results = await asyncio.gather(*(clients[i % 4].acquire([item]) for i in range(400)))
    assert sum(r[0].allowed for r in results) == 50
    # calls made together shared pipelined writes (each still its own atomic script)
    assert sum(c.pipelined for c in clients) > 0
    for client in clients:
        await client.aclose()


async def test_pipelined_calls_survive_a_script_cache_flush(redis_server: RedisServer) -> None:
    redis = store(redis_server, timeout=2.0)
    item = Item("flushed", GCRA, 3600.0, 30)
    assert (await redis.acquire([item]))[0].allowed
    redis_server.command("SCRIPT", "FLUSH")  # as after a Redis restart: NOSCRIPT
    results = await asyncio.gather(*(redis.acquire([item]) for _ in range(40)))
    assert sum(r[0].allowed for r in results) == 29
    assert redis.up and redis.errors == 0
    await redis.aclose()


async def test_outage_fails_fast_then_recovers_by_itself(redis_server: RedisServer) -> None:
    clock = Clock()
    redis = store(redis_server, clock, retry_interval=5.0)
    item = Item("k", GCRA, 1.0, 5)
    assert (await redis.acquire([item]))[0].allowed
    redis_server.stop()
    for _ in range(FAILURES_TO_OPEN):
        with pytest.raises(StoreUnavailable):
            await redis.acquire([item])
    assert not redis.up
    calls = redis.calls
    with pytest.raises(StoreUnavailable) as refused:
        await redis.acquire([item])
    assert redis.calls == calls  # refused at once: Redis was not even tried
    assert refused.value.retry_after == pytest.approx(5.0)
    redis_server.start()
    with pytest.raises(StoreUnavailable):
        await redis.acquire([item])  # still inside the back-off
    clock.now += 5.0
    assert (await redis.acquire([item]))[0].allowed  # the probe succeeds: up again
    assert redis.up
    assert redis.stats()["outages"] == 1
    await redis.aclose()


# --------------------------------------------------------------------------- batched


async def run_batched(
    server: RedisServer,
    processes: int,
    batch: int,
    burst: int,
    rounds: int,
    seed: int,
    interval: float = 10_000.0,
    sync_interval: float = 1e9,
) -> tuple[int, list[BatchedStore], float]:
    """``processes`` batched views of one bucket, interleaved at random.

    Returns (admitted, the stores, seconds elapsed on the injected clock)."""
    clock = Clock()
    start = clock.now
    # 2 s, not the 100 ms default: this test counts admissions, and a busy box must not
    # turn a slow reply into a fail-open/closed path it does not test
    stores = [
        BatchedStore(store(server, clock, timeout=2.0), clock=clock) for _ in range(processes)
    ]
    key = f"bucket-{processes}-{batch}-{seed}"
    item = BatchedItem(Item(key, GCRA, interval, burst), batch, sync_interval)
    rng = random.Random(seed)
    admitted = 0
    for _ in range(rounds):
        if interval < 1000:
            clock.now += rng.choice([0.0, 0.0, 0.0, interval / 4, interval, 3 * interval])
        # a random process, or several at once (their syncs interleave in Redis)
        chosen = rng.sample(stores, rng.randint(1, processes))
        results = await asyncio.gather(*(s.acquire_batched([item]) for s in chosen))
        admitted += sum(r[0].allowed for r in results)
    return admitted, stores, clock.now - start


@pytest.mark.parametrize(("processes", "batch"), [(1, 10), (2, 10), (3, 7), (4, 25)])
async def test_batched_over_admission_stays_within_the_bound(
    redis_server: RedisServer, processes: int, batch: int
) -> None:
    burst = 100
    for seed in range(5):
        admitted, stores, _ = await run_batched(redis_server, processes, batch, burst, 400, seed)
        # documented in authz/ratelimit/batched.py: burst + (P - 1) * batch, no refill here;
        # the adversarial interleaving reaches it (the bound is tight)
        assert burst <= admitted <= burst + (processes - 1) * batch, (seed, admitted)
        if processes == 1:
            assert admitted == burst  # one process alone is exact
        for s in stores:
            await s.aclose()
            await s.redis.aclose()


@pytest.mark.parametrize(("processes", "batch"), [(2, 5), (3, 10)])
async def test_batched_bound_holds_while_tokens_refill(
    redis_server: RedisServer, processes: int, batch: int
) -> None:
    burst, interval = 20, 0.05  # 20 at once, 20/s after
    for seed in range(5):
        admitted, stores, elapsed = await run_batched(
            redis_server, processes, batch, burst, 600, seed, interval, sync_interval=0.2
        )
        exact = burst + elapsed / interval  # what GCRA admits at most over the run
        assert admitted <= exact + (processes - 1) * batch, (seed, admitted, exact)
        for s in stores:
            await s.aclose()
            await s.redis.aclose()


async def test_batched_syncs_once_per_batch(redis_server: RedisServer) -> None:
    clock = Clock()
    batched = BatchedStore(store(redis_server, clock), clock=clock)
    item = BatchedItem(Item("volume", GCRA, 0.001, 1000), batch=20, sync_interval=60.0)
    for _ in range(200):
        assert (await batched.acquire_batched([item]))[0].allowed
    assert batched.syncs == 10  # one round trip per 20 decisions
    await batched.aclose()
    await batched.redis.aclose()


async def test_concurrent_first_decisions_share_one_sync(redis_server: RedisServer) -> None:
    # Requests that arrive together on a key this process has no view of yet must
    # wait for one sync, not each install a view over the others' admissions (an
    # overwritten view's admissions would never be charged: over-admission).
    clock = Clock()
    batched = BatchedStore(store(redis_server, clock), clock=clock)
    item = BatchedItem(Item("first-race", GCRA, 3600.0, 10), batch=4, sync_interval=60.0)
    outcomes = await asyncio.gather(*(batched.acquire_batched([item]) for _ in range(12)))
    assert sum(o[0].allowed for o in outcomes) == 10  # the whole burst, no more
    assert batched.syncs == 4  # budgets of 4, 4, 2, then 0 (empty): no sync raced another
    await batched.aclose()
    await batched.redis.aclose()


async def test_refund_after_a_sync_never_uncharges_a_newer_admission(
    redis_server: RedisServer,
) -> None:
    clock = Clock()
    batched = BatchedStore(store(redis_server, clock), clock=clock)
    item = BatchedItem(Item("refund", GCRA, 3600.0, 10), batch=4, sync_interval=60.0)
    _, refundable = await batched.acquire_on_views([item])  # admitted on the first view
    await batched._sync([item])  # a sync (e.g. the background flush) charges it
    _, newer = await batched.acquire_on_views([item])  # one admission on the new view
    batched.refund_batched(refundable)  # a later rule denied the first request
    assert newer[0].used == 1  # the newer admission is still to be charged
    batched.refund_batched(newer)  # while its view is current, a refund takes it back
    assert newer[0].used == 0
    await batched.aclose()
    await batched.redis.aclose()


async def test_background_flush_charges_idle_views(redis_server: RedisServer) -> None:
    batched = BatchedStore(store(redis_server))  # real clocks: the flusher runs on its own
    await batched.start()
    item = BatchedItem(Item("idle", GCRA, 3600.0, 10), batch=5, sync_interval=0.05)
    for _ in range(3):
        assert (await batched.acquire_batched([item]))[0].allowed
    assert batched.syncs == 1  # the first view; the three admissions are not charged yet
    probe = store(redis_server)
    deadline = time.monotonic() + 10
    while True:  # no more requests: the background flush charges them for the others
        (seen,) = await probe.acquire([Item("idle", SYNC, 3600.0, 10, cost=0)])
        if seen.remaining == 7:
            break
        assert time.monotonic() < deadline, "the idle view was never charged"
        await asyncio.sleep(0.02)
    await batched.aclose()
    await batched.redis.aclose()
    await probe.aclose()


# --------------------------------------------------------------------------- through authz serve


class Client:
    """A gRPC channel to one `authz serve`, reused for many checks."""

    def __init__(self, service: ServiceProcess) -> None:
        self.channel = grpc.insecure_channel(service.address)
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.lock = threading.Lock()

    def check(
        self, path: str, headers: dict[str, str] | None = None, source: str = "192.0.2.10"
    ) -> tuple[int, str, dict[str, str]]:
        request = build_check_request(
            method="GET", path=path, host="api.local", headers=headers or {}, source_address=source
        )
        reply = self.stub.Check(request, timeout=10)
        if reply.HasField("ok_response"):
            return (
                200,
                reply.dynamic_metadata["reason"],
                {h.header.key: h.header.value for h in reply.ok_response.response_headers_to_add},
            )
        denied = reply.denied_response
        return (
            int(denied.status.code),
            json.loads(denied.body)["error"],
            {h.header.key: h.header.value for h in denied.headers},
        )

    def close(self) -> None:
        self.channel.close()


def policy(server: RedisServer, tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        f"""\
rate_limits:
  stores:
    shared: {{type: redis, url: "{server.url}", timeout: 250ms, retry_interval: 500ms}}
{body}"""
    )
    return path


@pytest.fixture()
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def serve(
    start_service: Callable[..., ServiceProcess], path: Path, n: int, made: list[Client]
) -> list[Client]:
    services = [start_service(path, "--decision-log", "off") for _ in range(n)]
    made.extend(Client(s) for s in services)
    return made[-n:]


def hammer(clients: list[Client], path: str, total: int, threads: int = 8) -> list[int]:
    """``total`` checks spread over the clients from several threads at once."""
    statuses: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def work() -> None:
        for i in counter:
            status, _, _ = clients[i % len(clients)].check(path)
            with lock:
                statuses.append(status)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return statuses


def test_two_services_share_one_quota(
    redis_server: RedisServer,
    tmp_path: Path,
    start_service: Callable[..., ServiceProcess],
    clients: list[Client],
) -> None:
    path = policy(
        redis_server,
        tmp_path,
        """\
routes:
  - name: exact
    path: /exact
    methods: [GET]
    public: true
    rate_limits: [{name: exact, rate: 40/d, key: [route], store: shared}]
  - name: batched
    path: /batched
    methods: [GET]
    public: true
    rate_limits: [{name: batched, rate: 60/d, key: [route], store: shared, batch: 8}]
""",
    )
    two = serve(start_service, path, 2, clients)
    exact = hammer(two, "/exact", 160)
    assert exact.count(200) == 40  # one quota for both processes, no over-admission
    assert set(exact) == {200, 429}
    batched = hammer(two, "/batched", 200)
    # the documented bound: burst + (processes - 1) * batch (the rate adds < 1 in a day)
    assert 60 <= batched.count(200) <= 60 + 1 * 8


def test_memory_store_limits_each_process_on_its_own(
    tmp_path: Path, start_service: Callable[..., ServiceProcess], clients: list[Client]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "routes:\n  - {name: a, path: /a, methods: [GET], public: true,"
        " rate_limits: [{name: local, rate: 10/d, key: [route]}]}\n"
    )
    two = serve(start_service, path, 2, clients)
    assert hammer(two, "/a", 60).count(200) == 20  # why replicas need the shared store


def test_redis_stopped_mid_run_then_back(
    redis_server: RedisServer,
    tmp_path: Path,
    start_service: Callable[..., ServiceProcess],
    clients: list[Client],
) -> None:
    path = policy(
        redis_server,
        tmp_path,
        """\
routes:
  - name: closed
    path: /closed
    methods: [GET]
    public: true
    rate_limits: [{name: closed, rate: 1000/d, store: shared, on_store_error: deny}]
  - name: local
    path: /local
    methods: [GET]
    public: true
    rate_limits: [{name: local, rate: 3/d, store: shared, on_store_error: local}]
""",
    )
    (client,) = serve(start_service, path, 1, clients)
    service_log = Path(tmp_path).glob("serve-*.log")
    assert client.check("/closed")[0] == 200
    assert [client.check("/local")[0] for _ in range(4)] == [200, 200, 200, 429]

    redis_server.stop()
    status, reason, headers = client.check("/closed")
    assert (status, reason) == (503, "rate_limit_unavailable")
    assert int(headers["retry-after"]) >= 1
    # the local rule falls back to a bucket in this process: same limit, fresh bucket
    assert [client.check("/local")[0] for _ in range(4)] == [200, 200, 200, 429]
    assert all(client.check("/closed")[1] == "rate_limit_unavailable" for _ in range(5))

    redis_server.start()  # same port, empty: buckets start full
    deadline = time.monotonic() + 15
    while client.check("/closed")[0] != 200:
        assert time.monotonic() < deadline, "did not recover after Redis came back"
        time.sleep(0.1)
    # shared again: the local rule's bucket is Redis's (fresh after the restart)
    assert [client.check("/local")[0] for _ in range(4)] == [200, 200, 200, 429]
    log = "\n".join(p.read_text() for p in service_log)
    assert "unreachable" in log
    assert "reachable again" in log


def test_rotating_forwarded_for_does_not_evade_a_per_address_rule(
    redis_server: RedisServer,
    tmp_path: Path,
    start_service: Callable[..., ServiceProcess],
    clients: list[Client],
) -> None:
    path = policy(
        redis_server,
        tmp_path,
        """\
  rules:
    - {name: per-address, rate: 10/d, key: [client_address], store: shared}
routes:
  - {name: open, path: /open, methods: [GET], public: true, rate_limits: [{name: noop, rate: 1000/s}]}
""",
    )
    two = serve(start_service, path, 2, clients)
    statuses = [
        two[i % 2].check("/open", {"x-forwarded-for": f"10.{i}.0.1"}, source="203.0.113.5")[0]
        for i in range(40)
    ]
    assert statuses.count(200) == 10
    # the undeclared paths count against the same address too
    assert two[0].check("/nowhere", source="203.0.113.5")[1] == "rate_limited"
    assert two[0].check("/nowhere", source="203.0.113.6")[1] == "undeclared_route"


def test_path_variants_share_one_bucket(
    redis_server: RedisServer,
    tmp_path: Path,
    start_service: Callable[..., ServiceProcess],
    clients: list[Client],
) -> None:
    path = policy(
        redis_server,
        tmp_path,
        """\
routes:
  - name: order
    path: "/v1/orders/{id}"
    methods: [GET]
    public: true
    rate_limits: [{name: per-endpoint, rate: 4/d, key: [route, client_address], store: shared}]
""",
    )
    two = serve(start_service, path, 2, clients)
    variants = [
        "/v1/orders/1",
        "/v1//orders/2",
        "/v1/./orders/3",
        "/v1/%6Frders/4",
        "/v1/orders/5/../6",
    ]
    got = [two[i % 2].check(p) for i, p in enumerate(variants)]
    assert [g[0] for g in got] == [200, 200, 200, 200, 429]
    assert got[-1][2]["ratelimit-policy"] == '"per-endpoint";q=4;w=86400'


def test_the_bound_and_the_counters_are_logged(
    tmp_path: Path, start_service: Callable[..., ServiceProcess], clients: list[Client]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "rate_limits: {max_keys: 500}\n"
        "routes:\n  - {name: a, path: /a, methods: [GET], public: true,"
        " rate_limits: [{name: per-address, rate: 2/d, key: [client_address]},"
        " {name: trial, rate: 1/d, key: [client_address], shadow: true}]}\n"
    )
    service = start_service(path)
    client = Client(service)
    clients.append(client)
    statuses = [client.check("/a", source=f"198.51.100.{i % 250}")[0] for i in range(1000)]
    assert statuses.count(429) == 500  # 4 requests per address, 2 admitted
    assert service.stop() == 0  # SIGTERM: the last counters are logged on the way out
    log = service.log()
    assert "ratelimit: in-process buckets bounded at 500 keys" in log
    stats = json.loads(log.split("ratelimit stats ", 1)[1].splitlines()[0])
    assert stats["memory"]["max_keys"] == 500
    assert stats["memory"]["keys"] == 500  # 250 addresses, 2 rules: at the bound
    # the shadow rule would have denied all but the first request of each address
    assert stats["rules"]["trial"]["shadow_limited"] == 750
    assert stats["rules"]["per-address"] == {
        "admitted": 500,
        "limited": 500,
        "shadow_limited": 0,
        "fell_back": 0,
        "unavailable": 0,
    }
