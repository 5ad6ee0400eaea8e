"""Enforcement shared through a real redis-server (started here; no mocks).

- a revocation added on one enforcer is enforced by another within a bound (the
  staleness is printed: add on A -> seen by B);
- a lift on one is seen by the other; an entry made while Redis is down reaches the
  others once it is back; a Redis restart that lost its data does not lift anything;
- Redis down: ``on_error: allow`` keeps enforcing the last mirror, ``deny`` refuses
  every request with 503 enforcement_unavailable, until Redis is back.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from authz.errors import CallerBlocked, CredentialRevoked, EnforcementUnavailable
from authz.model import Identity, Request
from authz.policy.enforcement_config import EnforcementConfig, EnforcementRedisConfig
from authz.respond.enforcer import Enforcer
from authz.respond.stage import EnforceAddress, EnforceIdentity
from authz.stages import Context
from tests.redis_server import RedisServer

BOUND = 2.0  # seconds: what "within a bound" means here (measured: milliseconds)


def config(server: RedisServer, on_error: str = "allow") -> EnforcementConfig:
    store = EnforcementRedisConfig(
        url=server.url, on_error=on_error, timeout=0.2, retry_interval=0.1, key_prefix="t:"
    )
    return EnforcementConfig(store=store)


async def until(predicate: Callable[[], bool], timeout: float = BOUND) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.0005)
    return time.perf_counter() - started


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[Any]:
    made: list[Enforcer] = []

    async def make(on_error: str = "allow") -> Enforcer:
        enforcer = Enforcer(config(redis_server, on_error))
        await enforcer.start()
        made.append(enforcer)
        return enforcer

    yield make
    for enforcer in made:
        await enforcer.aclose()


def request_from(address: str) -> Context:
    return Context(Request(method="GET", path="/", source_address=address), "/", "")


async def test_revocation_on_one_is_enforced_by_the_other(pair: Any) -> None:
    a, b = await pair(), await pair()
    stale = []
    for i in range(20):
        entry = a.add("revoke", "token", f"jti-{i}", 60, by="op")
        stale.append(await until(lambda e=entry: b.table.get(e.key) is not None))
    seen = b.table.get(entry.key)
    assert seen is not None and seen.by == "op" and seen.expires == entry.expires
    print(
        f"\nstaleness add on A -> seen by B over 20 adds: median "
        f"{statistics.median(stale) * 1000:.2f} ms, max {max(stale) * 1000:.2f} ms"
    )
    assert b.identity_active
    # enforced by b's stage, not just listed
    stage = EnforceIdentity(b, 0, {}, {}, EnforceAddress(b, 0))
    ctx = request_from("10.0.0.1")
    ctx.identity = Identity(kind="jwt", subject="alice", claims={"jti": "jti-19"})
    with pytest.raises(CredentialRevoked):
        stage.step(ctx)
    ctx.identity = Identity(kind="jwt", subject="alice", claims={"jti": "jti-other"})
    assert stage.step(ctx) is None
    a.lift("revoke", "token", "jti-3")
    await until(lambda: not any(e.target == "jti-3" for e in b.entries()))
    # a lift on a replica that never saw the entry still lifts it everywhere
    c_only = b.add("block", "subject", "eve", 60, by="op")
    await until(lambda: a.table.get(c_only.key) is not None)
    b.table.remove(c_only.key)  # as if b had missed it
    b.lift("block", "subject", "eve")
    await until(lambda: a.table.get(c_only.key) is None)


async def test_a_new_enforcer_starts_from_what_is_in_force(pair: Any) -> None:
    a = await pair()
    a.add("block", "address", "10.0.0.1", 60, by="op")
    a.add("block", "prefix", "10.0.1.0/24", 0.3, by="op")
    await until(lambda: a.sync is not None and a.sync.pending == 0)
    b = await pair()
    assert {e.target for e in b.entries()} == {"10.0.0.1", "10.0.1.0/24"}
    await asyncio.sleep(0.5)
    assert {e.target for e in b.entries()} == {"10.0.0.1"}  # Redis let the other expire


async def test_redis_down_allow_keeps_the_mirror(pair: Any, redis_server: RedisServer) -> None:
    a, b = await pair("allow"), await pair("allow")
    a.add("block", "address", "10.0.0.7", 60, by="op")
    await until(lambda: bool(b.table.index["address"]))
    stage = EnforceAddress(b, 0)
    redis_server.stop()
    await until(lambda: b.sync is not None and not b.sync.up)
    assert not b.failing
    with pytest.raises(CallerBlocked):
        stage.step(request_from("10.0.0.7"))
    assert stage.step(request_from("10.0.0.8")) is None
    # made during the outage: enforced here at once, and by the other once Redis is back
    during = a.add("revoke", "subject", "mallory", 60, by="op")
    redis_server.start()
    await until(lambda: b.table.get(during.key) is not None, timeout=5)
    assert b.table.get("block|address|10.0.0.7") is not None  # the restart lost nothing


async def test_redis_down_deny_refuses_until_back(pair: Any, redis_server: RedisServer) -> None:
    b = await pair("deny")
    stage = EnforceAddress(b, 0)
    assert stage.step(request_from("10.0.0.8")) is None
    redis_server.stop()
    await until(lambda: b.failing)
    with pytest.raises(EnforcementUnavailable) as caught:
        stage.step(request_from("10.0.0.8"))
    assert (caught.value.status, caught.value.reason) == (503, "enforcement_unavailable")
    redis_server.start()
    await until(lambda: not b.failing, timeout=5)
    assert stage.step(request_from("10.0.0.8")) is None


async def test_unreachable_at_start(redis_server: RedisServer) -> None:
    redis_server.stop()
    deny = Enforcer(config(redis_server, "deny"))
    allow = Enforcer(config(redis_server, "allow"))
    await deny.start()
    await allow.start()
    try:
        assert deny.failing and not allow.failing
        redis_server.start()
        await until(lambda: not deny.failing and deny.sync is not None and deny.sync.up, 5)
    finally:
        await deny.aclose()
        await allow.aclose()


async def test_actions_from_another_thread_reach_every_replica(pair: Any) -> None:
    import threading

    from authz.detect.events import Action

    a, b = await pair(), await pair()
    action = Action(time.time(), "token_sharing", "revoke", "token", "jti-shared", 600.0,
                    "credential_revoked", {"addresses": 9.0, "threshold": 8.0})  # fmt: skip
    scorer = threading.Thread(target=a.apply, args=(action,))  # as a scorer thread would
    scorer.start()
    scorer.join()
    await until(lambda: b.table.get("revoke|token|jti-shared") is not None)
    seen = b.table.get("revoke|token|jti-shared")
    assert seen is not None and seen.by == "token_sharing" and seen.source == "detector"
    assert dict(seen.evidence) == {"addresses": "9.0", "threshold": "8.0"}

    async def listed() -> list[Any]:
        return await b.shared_actions(10)

    deadline = time.monotonic() + BOUND
    while not await listed():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    [record] = await listed()
    assert (record.action.detector, record.action.target, record.outcome) == (
        "token_sharing", "jti-shared", "enforced",
    )  # fmt: skip
    assert record.action.evidence == {"addresses": "9.0", "threshold": "8.0"}
    assert b.actions() == []  # b's own: none; the shared list has a's
    assert await b.shared_actions(10, detector="honeypot") == []
