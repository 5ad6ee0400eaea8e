"""The in-process store: buckets in one bounded table, least recently used evicted.

Memory is bounded by ``max_keys``: a request for a new key when the table is
full evicts the least recently used bucket. A bucket whose state has run out
(a GCRA bucket that is full again, leases that have all expired) carries no
information, so dropping it changes nothing; these are also swept as requests
arrive. Evicting a bucket that still holds state ("live") forgets it: that key
starts again with a full bucket, so under a flood of more than ``max_keys``
distinct keys the limit per key can be exceeded — never the memory. Both kinds
of eviction are counted and reported by :meth:`MemoryStore.stats`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from authz.ratelimit.base import EPSILON, LEASE, Item, Outcome, gcra
from authz.telemetry.metrics import MemoryMetrics, Metrics, report_table

#: Bytes one bucket takes in a full table (a key of ~25 characters, its TAT, the
#: ordered table's entry), measured with tracemalloc over 1,000,000 keys; the
#: table briefly needs ~30% more while it grows. bench/ratelimit.py prints it.
BYTES_PER_KEY = 250

Bucket = float | deque[float]


class MemoryStore:
    """Buckets in this process; decisions need no I/O (``decide`` is synchronous)."""

    name = "memory"

    def __init__(
        self,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        *,
        metrics: Metrics | None = None,
        table: str | None = None,
    ):
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()
        m = metrics if metrics is not None else MemoryMetrics()
        evicted = m.counter(
            "authz_ratelimit_memory_evicted_total",
            "in-process buckets evicted from the full table (live: it held state)",
            ("state",),
        )
        self._evicted_expired = evicted.labels("expired")  # full again: nothing lost
        self._evicted_live = evicted.labels("live")  # held state: that key restarts full
        self._swept = m.counter(
            "authz_ratelimit_memory_expired_total", "in-process buckets dropped once full again"
        ).labels()
        self._ticks = 0
        if table is not None:  # its name in authz_table_entries
            report_table(m, table, self._buckets.__len__, lambda: self.max_keys)

    @property
    def evicted_expired(self) -> int:
        return int(getattr(self._evicted_expired, "value", 0))

    @property
    def evicted_live(self) -> int:
        return int(getattr(self._evicted_live, "value", 0))

    @property
    def swept(self) -> int:
        return int(getattr(self._swept, "value", 0))

    def __len__(self) -> int:
        return len(self._buckets)

    def decide(self, items: Sequence[Item]) -> list[Outcome]:
        """Decide ``items`` together, all or nothing (see :mod:`authz.ratelimit.base`)."""
        now = self.clock()
        buckets = self._buckets
        self._ticks += 1
        if not self._ticks & 7 and buckets:
            self._sweep(now)
        if len(items) == 1 and items[0].mode != LEASE:
            return [self._one(items[0], now)]
        outcomes: list[Outcome] = []
        new_states: list[float | None] = []
        admit = True
        for item in items:
            state = buckets.get(item.key)
            if item.mode == LEASE:
                outcome = _lease(state if isinstance(state, deque) else None, item, now)
                new_states.append(now + item.interval if outcome.allowed else None)
            else:
                tat = state if isinstance(state, float) else now
                allowed, new_tat, outcome = gcra(tat, now, item.interval, item.capacity, item.cost)
                new_states.append(new_tat if allowed else None)
            if not outcome.allowed and not item.shadow:
                admit = False
            outcomes.append(outcome)
        if admit:
            for item, new_state in zip(items, new_states, strict=True):
                if new_state is not None:
                    self._store(item, new_state, now)
        return outcomes

    def _one(self, item: Item, now: float) -> Outcome:
        """The common case, one rate rule: :func:`gcra` inlined."""
        buckets = self._buckets
        key = item.key
        state = buckets.get(key)
        tat = state if isinstance(state, float) and state > now else now
        interval = item.interval
        new_tat = tat + interval * item.cost
        allow_at = new_tat - interval * item.capacity
        if allow_at > now + EPSILON * interval:
            return Outcome(False, 0, tat - now, allow_at - now)
        if state is None:
            if len(buckets) >= self.max_keys:
                self._evict(now)
            buckets[key] = new_tat
        else:
            buckets[key] = new_tat
            buckets.move_to_end(key)
        remaining = math.floor((now - allow_at) / interval + EPSILON)
        return Outcome(True, remaining if remaining > 0 else 0, new_tat - now)

    async def acquire(self, items: Sequence[Item]) -> list[Outcome]:
        return self.decide(items)

    def refund(self, items: Sequence[Item]) -> None:
        """Undo the charge of admitted ``items`` (a later store denied the request)."""
        for item in items:
            state = self._buckets.get(item.key)
            if isinstance(state, deque):
                if state:
                    state.pop()
            elif state is not None:
                self._buckets[item.key] = state - item.interval * item.cost

    async def release(self, items: Sequence[Item]) -> None:
        self.refund(items)

    def _store(self, item: Item, new_state: float, now: float) -> None:
        buckets = self._buckets
        state = buckets.get(item.key)
        if state is None:
            if len(buckets) >= self.max_keys:
                self._evict(now)
            if item.mode == LEASE:
                buckets[item.key] = deque((new_state,))
            else:
                buckets[item.key] = new_state
            return
        buckets.move_to_end(item.key)
        if isinstance(state, deque):
            state.append(new_state)
        else:
            buckets[item.key] = new_state

    def _evict(self, now: float) -> None:
        while len(self._buckets) >= self.max_keys:
            _, state = self._buckets.popitem(last=False)
            if _live(state, now):
                self._evicted_live.inc()
            else:
                self._evicted_expired.inc()

    def _sweep(self, now: float) -> None:
        # a little work every 8 decisions: the oldest buckets, if they hold nothing
        buckets = self._buckets
        for _ in range(16):
            key = next(iter(buckets), None)
            if key is None or _live(buckets[key], now):
                return
            del buckets[key]
            self._swept.inc()

    def stats(self) -> dict[str, int]:
        return {
            "keys": len(self._buckets),
            "max_keys": self.max_keys,
            "approx_bytes": len(self._buckets) * BYTES_PER_KEY,
            "evicted_live": self.evicted_live,
            "evicted_expired": self.evicted_expired,
            "expired": self.swept,
        }


def _live(state: Bucket, now: float) -> bool:
    if isinstance(state, deque):
        return bool(state) and state[-1] > now
    return state > now


def _lease(leases: deque[float] | None, item: Item, now: float) -> Outcome:
    while leases and leases[0] <= now:
        leases.popleft()
    held = len(leases) if leases else 0
    if held + item.cost <= item.capacity:
        return Outcome(True, item.capacity - held - item.cost, item.interval)
    assert leases is not None
    return Outcome(False, 0, leases[-1] - now, leases[held - item.capacity] - now)
