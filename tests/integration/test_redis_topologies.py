"""Shared stores past one Redis, against real servers started here (no mocks):

- a three-node Redis Cluster (``redis-cli --cluster create``): rate-limit buckets
  spread over every node, each bucket exact; a decision whose buckets live on
  different nodes is still all or nothing (the admitting node gives its tokens back);
  blocks and revocations meet in one slot and reach another replica; the DPoP replay
  cache refuses a second use;
- a primary, a replica and one Sentinel: the primary is killed mid-run; while the
  Sentinel fails over, each rule keeps its configured behaviour (``deny``: 503,
  ``local``: limited in the process) and the enforcement store with ``on_error:
  deny`` refuses; then everything works against the promoted replica, with the
  blocks made before the kill still in force;
- a TLS-only server asking for a client certificate and a password: the store
  connects with the files the policy names, and is refused without them;
- a Sentinel with its own ``requirepass`` (and one TLS-only, asking for a client
  certificate): ``sentinel_password_file``/``sentinel_tls`` connect, a wrong password,
  none, or no client certificate is refused into the store's failure mode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from authz.errors import EnforcementUnavailable
from authz.identity.dpop_redis import RedisReplayCache
from authz.policy.enforcement_config import EnforcementConfig, EnforcementRedisConfig
from authz.policy.loader import load_policy
from authz.policy.ratelimit_config import RedisStoreConfig
from authz.policy.redis_target import RedisTarget
from authz.ratelimit.base import GCRA, Item, StoreUnavailable
from authz.ratelimit.redis_store import RedisStore
from authz.respond.enforcer import Enforcer
from authz.respond.stage import EnforceAddress
from tests.certs import make_mtls_pki
from tests.integration.test_enforcement_redis import request_from, until
from tests.integration.test_ratelimit_redis import Client, clients, serve  # noqa: F401
from tests.redis_topologies import RedisClusterTopology, SentinelTopology, TlsRedisServer, cli
from tests.support import ServiceProcess


def nodes(addresses: list[str]) -> tuple[tuple[str, int], ...]:
    return tuple((a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in addresses)


def cluster_store(topology: RedisClusterTopology) -> RedisStore:
    target = RedisTarget(cluster=nodes(topology.addresses))
    return RedisStore(RedisStoreConfig(name="c", url="", target=target, timeout=1.0))


# ------------------------------------------------------------------------- the cluster


async def test_cluster_buckets_spread_over_every_node_and_stay_exact(
    redis_cluster: RedisClusterTopology,
) -> None:
    store = cluster_store(redis_cluster)
    try:
        keys = [f"authz:rl:{{r:{i}}}" for i in range(30)]
        for key in keys:
            outcomes = [(await store.acquire([Item(key, GCRA, 3600.0, 3)]))[0] for _ in range(5)]
            assert [o.allowed for o in outcomes] == [True, True, True, False, False]
        held = redis_cluster.keys()
        assert all(held[port] for port in held), held  # every node holds buckets
        assert sorted(k for ks in held.values() for k in ks) == sorted(keys)
    finally:
        await store.aclose()


async def test_cluster_decision_across_nodes_is_all_or_nothing(
    redis_cluster: RedisClusterTopology,
) -> None:
    store = cluster_store(redis_cluster)
    try:
        # two buckets on different nodes
        a = "authz:rl:{a:1}"
        b = next(
            f"authz:rl:{{b:{i}}}"
            for i in range(100)
            if redis_cluster.node_of(f"authz:rl:{{b:{i}}}") != redis_cluster.node_of(a)
        )
        full = Item(b, GCRA, 3600.0, 1)
        assert (await store.acquire([full]))[0].allowed  # b is now empty
        roomy = Item(a, GCRA, 3600.0, 5)
        both = await store.acquire([roomy, full])
        assert not both[1].allowed
        # a's token was given back: a still has all five
        assert (await store.acquire([roomy]))[0].remaining == 4
        # shadow items do not deny
        shadow = Item(b, GCRA, 3600.0, 1, shadow=True)
        assert (await store.acquire([roomy, shadow]))[0].allowed
    finally:
        await store.aclose()


async def test_cluster_blocks_and_revocations_reach_another_replica(
    redis_cluster: RedisClusterTopology,
) -> None:
    target = RedisTarget(cluster=nodes(redis_cluster.addresses))
    store = EnforcementRedisConfig(
        url="", target=target, on_error="deny", timeout=0.2, retry_interval=0.1
    )
    a, b = Enforcer(EnforcementConfig(store=store)), Enforcer(EnforcementConfig(store=store))
    await a.start()
    await b.start()
    try:
        block = a.add("block", "address", "10.0.0.7", 60, by="op")
        revoke = a.add("revoke", "token", "jti-1", 60, by="op")
        await until(lambda: b.table.get(block.key) is not None)
        await until(lambda: b.table.get(revoke.key) is not None)
        assert not b.failing
        # every key in the prefix's slot, so the resync's SCAN + MGET works on one node
        held = {k for ks in redis_cluster.keys().values() for k in ks}
        assert f"{{authz:enf:}}e:{block.key}" in held and "{authz:enf:}log" in held
        c = Enforcer(EnforcementConfig(store=store))
        await c.start()  # a third replica starts from what is in force (resync)
        try:
            assert c.table.get(block.key) is not None and c.table.get(revoke.key) is not None
        finally:
            await c.aclose()
        a.lift("block", "address", "10.0.0.7")
        await until(lambda: b.table.get(block.key) is None)
    finally:
        await a.aclose()
        await b.aclose()


async def test_cluster_dpop_replay_cache(redis_cluster: RedisClusterTopology) -> None:
    target = RedisTarget(cluster=nodes(redis_cluster.addresses))
    cache = RedisReplayCache(RedisStoreConfig(name="c", url="", target=target, timeout=1.0))
    try:
        now = time.time()
        for i in range(20):
            assert await cache.first_use(f"thumb|jti-{i}", now + 60, now)
            assert not await cache.first_use(f"thumb|jti-{i}", now + 60, now)
    finally:
        await cache.aclose()


# ------------------------------------------------------------------------ the sentinel


def test_sentinel_failover_keeps_each_rules_behaviour_then_recovers(
    redis_sentinel: SentinelTopology,
    tmp_path: Path,
    start_service: Callable[..., ServiceProcess],
    clients: list[Client],  # noqa: F811
) -> None:
    sentinels = ", ".join(f'"{s}"' for s in redis_sentinel.sentinels)
    path = tmp_path / "policy.yaml"
    path.write_text(
        f"""\
rate_limits:
  stores:
    shared:
      type: redis
      sentinels: [{sentinels}]
      service: {redis_sentinel.service}
      timeout: 250ms
      retry_interval: 200ms
routes:
  - name: closed
    path: /closed
    methods: [GET]
    public: true
    rate_limits: [{{name: closed, rate: 1000/d, store: shared, on_store_error: deny}}]
  - name: local
    path: /local
    methods: [GET]
    public: true
    rate_limits: [{{name: local, rate: 3/d, store: shared, on_store_error: local}}]
"""
    )
    (client,) = serve(start_service, path, 1, clients)
    assert client.check("/closed")[0] == 200
    assert [client.check("/local")[0] for _ in range(4)] == [200, 200, 200, 429]
    old = redis_sentinel.primary.port
    redis_sentinel.kill_primary()
    # while the Sentinel has not promoted the replica: the configured behaviour
    status, reason, _ = client.check("/closed")
    assert (status, reason) == (503, "rate_limit_unavailable")
    assert [client.check("/local")[0] for _ in range(4)] == [200, 200, 200, 429]
    deadline = time.monotonic() + 20
    while client.check("/closed")[0] != 200:
        assert time.monotonic() < deadline, "did not recover after the failover"
        time.sleep(0.1)
    assert redis_sentinel.primary_port() == redis_sentinel.replica.port != old
    # shared again, on the promoted replica, which had the bucket replicated
    assert client.check("/local")[0] == 429


async def test_sentinel_failover_enforcement_on_error_deny(
    redis_sentinel: SentinelTopology,
) -> None:
    target = RedisTarget(sentinels=nodes(redis_sentinel.sentinels), service=redis_sentinel.service)
    store = EnforcementRedisConfig(
        url="", target=target, on_error="deny", timeout=0.2, retry_interval=0.1
    )
    a = Enforcer(EnforcementConfig(store=store))
    await a.start()
    try:
        block = a.add("block", "address", "10.0.0.7", 60, by="op")
        # replicated before the kill (WAIT: the replica acknowledged it)
        await until(lambda: a.sync is not None and not a.sync.pending)
        assert a.sync is not None and a.sync._writer_client is not None
        await a.sync._writer_client.execute_command("WAIT", 1, 2000)
        stage = EnforceAddress(a, 0)
        assert stage.step(request_from("10.0.0.8")) is None
        redis_sentinel.kill_primary()
        await until(lambda: a.failing, timeout=5)
        with pytest.raises(EnforcementUnavailable):
            stage.step(request_from("10.0.0.8"))
        await until(lambda: not a.failing, timeout=20)
        assert redis_sentinel.primary_port() == redis_sentinel.replica.port
        assert a.table.get(block.key) is not None  # resynced from the promoted replica
        assert stage.step(request_from("10.0.0.8")) is None
        lifted = a.add("revoke", "token", "jti-after", 60, by="op")
        await until(lambda: a.sync is not None and not a.sync.pending, timeout=5)
        fresh = Enforcer(EnforcementConfig(store=store))
        await fresh.start()
        try:
            assert fresh.table.get(lifted.key) is not None
        finally:
            await fresh.aclose()
    finally:
        await a.aclose()


async def test_sentinel_dpop_replay_cache_fails_closed_then_recovers(
    redis_sentinel: SentinelTopology,
) -> None:
    from authz.errors import DpopReplayUnavailable

    target = RedisTarget(sentinels=nodes(redis_sentinel.sentinels), service=redis_sentinel.service)
    config = RedisStoreConfig(name="s", url="", target=target, timeout=0.3, pool_size=2)
    cache = RedisReplayCache(config)
    try:
        now = time.time()
        assert await cache.first_use("t|1", now + 60, now)
        # more calls at once than the pool holds: they wait for a connection (bounded
        # like a single server's pool), they do not fail
        many = [cache.first_use(f"t|many-{i}", now + 60, now) for i in range(20)]
        assert all(await asyncio.gather(*many))
        redis_sentinel.kill_primary()
        with pytest.raises(DpopReplayUnavailable):
            await cache.first_use("t|2", now + 60, now)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert await cache.first_use("t|3", now + 60, now)
                break
            except DpopReplayUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    finally:
        await cache.aclose()


# ------------------------------------------------------- credentials and TLS from files


async def test_tls_client_certificate_and_password_from_files(tmp_path: Path) -> None:
    pki = make_mtls_pki(tmp_path / "pki")
    server = TlsRedisServer(tmp_path / "tls", pki, password="s3cret-from-a-file").start()
    client = next(iter(pki.clients.values()))
    try:
        (tmp_path / "password").write_text("s3cret-from-a-file\n")
        (tmp_path / "wrong").write_text("guess\n")

        def policy(password_file: str, tls: str) -> RedisStoreConfig:
            path = tmp_path / "policy.yaml"
            path.write_text(
                "rate_limits:\n  stores:\n    shared:\n      type: redis\n"
                f'      url: "{server.url}"\n      timeout: 1s\n'
                f"      password_file: {password_file}\n      tls: {tls}\n"
                "routes:\n  - {name: a, path: /a, methods: [GET], public: true}\n"
            )
            return load_policy(path).rate_limits.stores[0]

        full = f"{{ca_file: {pki.ca.cert}, cert_file: {client.cert}, key_file: {client.key}}}"
        good = RedisStore(policy("password", full))
        try:
            outcomes = [(await good.acquire([Item("k", GCRA, 3600.0, 2)]))[0] for _ in range(3)]
            assert [o.allowed for o in outcomes] == [True, True, False]
        finally:
            await good.aclose()
        for config in (policy("wrong", full), policy("password", f"{{ca_file: {pki.ca.cert}}}")):
            refused = RedisStore(config)
            try:
                with pytest.raises(StoreUnavailable):
                    await refused.acquire([Item("k", GCRA, 3600.0, 2)])
            finally:
                await refused.aclose()
    finally:
        server.stop()


async def test_sentinel_password_from_a_file(tmp_path: Path) -> None:
    """A Sentinel with its own ``requirepass``: the store logs in to it with the
    ``sentinel_password_file`` the policy names; a wrong one (or none) is refused, and
    the store fails the way its failure mode says (StoreUnavailable: deny/local)."""
    topology = SentinelTopology(tmp_path / "sentinel", sentinel_password="sentinel-s3cret")
    topology.start()
    try:
        assert "NOAUTH" in cli(topology.sentinel_port, "sentinel", "masters")
        (tmp_path / "sentinel-password").write_text("sentinel-s3cret\n")
        (tmp_path / "wrong").write_text("guess\n")

        def store(auth: str) -> RedisStore:
            path = tmp_path / "policy.yaml"
            path.write_text(
                "rate_limits:\n  stores:\n    shared:\n      type: redis\n"
                f'      sentinels: ["{topology.sentinels[0]}"]\n'
                f"      service: {topology.service}\n      timeout: 1s\n{auth}"
                "routes:\n  - {name: a, path: /a, methods: [GET], public: true}\n"
            )
            return RedisStore(load_policy(path).rate_limits.stores[0])

        good = store("      sentinel_password_file: sentinel-password\n")
        try:
            outcomes = [(await good.acquire([Item("k", GCRA, 3600.0, 2)]))[0] for _ in range(3)]
            assert [o.allowed for o in outcomes] == [True, True, False]
        finally:
            await good.aclose()
        for auth in ("      sentinel_password_file: wrong\n", ""):
            refused = store(auth)
            try:
                with pytest.raises(StoreUnavailable) as caught:
                    await refused.acquire([Item("k", GCRA, 3600.0, 2)])
                # refused by the sentinel's login, at once (no retry backoff past timeout)
                assert "AuthenticationError" in str(caught.value), caught.value
            finally:
                await refused.aclose()
    finally:
        topology.stop()


async def test_sentinel_tls_and_password_from_files(tmp_path: Path) -> None:
    """A Sentinel that speaks only TLS, asks for a client certificate and a password:
    ``sentinel_tls`` with the files connects (the data nodes stay plain text: the
    sentinels' settings are their own); without a client certificate it is refused."""
    pki = make_mtls_pki(tmp_path / "pki")
    client = next(iter(pki.clients.values()))
    topology = SentinelTopology(
        tmp_path / "sentinel", sentinel_password="sentinel-s3cret", sentinel_pki=pki
    )
    topology.start()
    try:
        (tmp_path / "sentinel-password").write_text("sentinel-s3cret\n")

        def store(tls: str) -> RedisStore:
            path = tmp_path / "policy.yaml"
            path.write_text(
                "rate_limits:\n  stores:\n    shared:\n      type: redis\n"
                f'      sentinels: ["{topology.sentinels[0]}"]\n'
                f"      service: {topology.service}\n      timeout: 1s\n"
                f"      sentinel_password_file: sentinel-password\n      sentinel_tls: {tls}\n"
                "routes:\n  - {name: a, path: /a, methods: [GET], public: true}\n"
            )
            return RedisStore(load_policy(path).rate_limits.stores[0])

        full = f"{{ca_file: {pki.ca.cert}, cert_file: {client.cert}, key_file: {client.key}}}"
        good = store(full)
        try:
            outcomes = [(await good.acquire([Item("k", GCRA, 3600.0, 2)]))[0] for _ in range(3)]
            assert [o.allowed for o in outcomes] == [True, True, False]
        finally:
            await good.aclose()
        refused = store(f"{{ca_file: {pki.ca.cert}}}")
        try:
            with pytest.raises(StoreUnavailable):
                await refused.acquire([Item("k", GCRA, 3600.0, 2)])
        finally:
            await refused.aclose()
    finally:
        topology.stop()
