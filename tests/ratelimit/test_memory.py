"""GCRA and concurrency leases in the in-process store, on an injected clock."""

from __future__ import annotations

import pytest

from authz.ratelimit.base import GCRA, LEASE, Item
from authz.ratelimit.memory import BYTES_PER_KEY, MemoryStore


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rate(key: str, per_second: float, burst: int, shadow: bool = False) -> Item:
    return Item(key, GCRA, 1.0 / per_second, burst, shadow)


def admitted(store: MemoryStore, item: Item, n: int) -> int:
    return sum(store.decide([item])[0].allowed for _ in range(n))


def test_burst_then_steady_rate() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    item = rate("k", per_second=10, burst=5)
    assert admitted(store, item, 20) == 5  # the burst, at once
    denied = store.decide([item])[0]
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(0.1)
    clock.now += 0.1
    assert admitted(store, item, 20) == 1  # one token per 100 ms
    clock.now += 1.0
    assert admitted(store, item, 20) == 5  # refilled, never beyond the burst


def test_no_burst_at_window_edges() -> None:
    # 100/min: a fixed window admits 100 at 0:59.9 and 100 more at 1:00.1.
    clock = Clock(59.9)
    store = MemoryStore(clock=clock)
    item = rate("k", per_second=100 / 60, burst=100)
    assert admitted(store, item, 150) == 100
    clock.now = 60.1
    assert admitted(store, item, 100) == 0
    clock.now = 59.9 + 60  # a whole minute later, the whole burst is back
    assert admitted(store, item, 150) == 100


def test_any_window_admits_at_most_burst_plus_rate() -> None:
    clock = Clock(0.0)
    store = MemoryStore(clock=clock)
    item = rate("k", per_second=20, burst=10)
    times = []
    for step in range(5000):  # a request every millisecond for 5 s
        clock.now = step / 1000
        if store.decide([item])[0].allowed:
            times.append(clock.now)
    for window in (0.001, 0.05, 0.5, 1.0, 2.5):
        for i, start in enumerate(times):
            inside = sum(1 for t in times[i:] if t < start + window)
            assert inside <= 10 + window * 20 + 1e-9, (window, start, inside)
    assert len(times) == pytest.approx(10 + 5 * 20, abs=1)


def test_remaining_and_reset() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    item = rate("k", per_second=2, burst=4)
    first = store.decide([item])[0]
    assert first.remaining == 3
    assert first.reset == pytest.approx(0.5)
    for _ in range(3):
        last = store.decide([item])[0]
    assert last.remaining == 0
    assert last.reset == pytest.approx(2.0)
    denied = store.decide([item])[0]
    assert (denied.allowed, denied.remaining) == (False, 0)
    assert denied.reset == pytest.approx(2.0)
    assert denied.retry_after == pytest.approx(0.5)


def test_all_or_nothing_across_rules() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    wide = rate("wide", per_second=1, burst=10)
    narrow = rate("narrow", per_second=1, burst=2)
    for _ in range(5):
        store.decide([wide, narrow])
    # only two requests got through both; the narrow rule's denials did not use wide's quota
    assert store.decide([wide])[0].remaining == 10 - 2 - 1


def test_shadow_rule_counts_but_never_blocks() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    enforced = rate("enforced", per_second=1, burst=10)
    shadow = rate("shadow", per_second=1, burst=3, shadow=True)
    results = [store.decide([enforced, shadow]) for _ in range(5)]
    assert [r[1].allowed for r in results] == [True, True, True, False, False]
    assert store.decide([enforced])[0].remaining == 10 - 5 - 1  # all five admitted


def test_refund_gives_back_a_token() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    item = rate("k", per_second=1, burst=2)
    store.decide([item])
    store.decide([item])
    assert not store.decide([item])[0].allowed
    store.refund([item])
    assert store.decide([item])[0].allowed


def test_concurrency_leases() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    lease = Item("cap", LEASE, 10.0, 2)
    assert store.decide([lease])[0].allowed
    clock.now += 4
    second = store.decide([lease])[0]
    assert (second.allowed, second.remaining) == (True, 0)
    third = store.decide([lease])[0]
    assert not third.allowed
    assert third.retry_after == pytest.approx(6.0)  # when the first lease ends
    assert third.reset == pytest.approx(10.0)  # when both have ended
    clock.now += 6
    assert store.decide([lease])[0].allowed  # the first lease expired
    store.refund([lease])  # a later rule denied: the lease is given back
    assert store.decide([lease])[0].allowed


def test_a_million_keys_stay_within_the_bound() -> None:
    clock = Clock()
    store = MemoryStore(max_keys=10_000, clock=clock)
    for i in range(1_000_000):
        clock.now += 0.000001
        store.decide([Item(f"client-{i}", GCRA, 1.0, 5)])
    stats = store.stats()
    assert len(store) == stats["keys"] <= 10_000
    assert stats["max_keys"] == 10_000
    # each key still held state when it was pushed out: those evictions are reported
    assert stats["evicted_live"] + stats["evicted_expired"] + stats["expired"] == 990_000
    assert stats["evicted_live"] > 0
    assert stats["approx_bytes"] == stats["keys"] * BYTES_PER_KEY


def test_full_buckets_expire_and_are_swept() -> None:
    clock = Clock()
    store = MemoryStore(max_keys=1000, clock=clock)
    for i in range(100):
        store.decide([Item(f"k{i}", GCRA, 0.1, 1)])
    clock.now += 1.0  # every bucket is full again: no information left
    for i in range(100):
        store.decide([Item(f"other{i}", GCRA, 0.1, 1)])
    assert store.stats()["expired"] >= 100
    assert len(store) <= 100
    assert store.stats()["evicted_live"] == 0


def test_evicting_a_live_bucket_forgets_it() -> None:
    clock = Clock()
    store = MemoryStore(max_keys=2, clock=clock)
    hot = rate("hot", per_second=0.001, burst=1)
    assert store.decide([hot])[0].allowed
    assert not store.decide([hot])[0].allowed
    store.decide([rate("a", 0.001, 1)])
    store.decide([rate("b", 0.001, 1)])  # pushes "hot" out while it still holds state
    assert store.stats()["evicted_live"] == 1
    assert store.decide([hot])[0].allowed  # the documented cost of the bound
