"""Batched counting against Redis: count locally, sync every ``batch`` admissions.

For routes with so much traffic that one Redis round trip per decision costs
too much. Each process keeps, per bucket, a *view* of the shared bucket:

1. A **sync** is one call of the same atomic script: it charges the admissions
   this process made since its last sync (unconditionally: an over-admission
   becomes debt that later requests pay back) and returns the bucket's state.
   From it the process takes a **budget**: ``min(batch, tokens available)``.
2. Between syncs the process admits locally, with no I/O, while it has budget.
3. It syncs again when the budget is spent (the request that finds it spent
   waits for the sync), when the view is older than ``sync_interval``, or, if
   the bucket was empty, once the next token is due (until then it denies
   locally, so a flood of denied requests costs Redis nothing).
   A background task also flushes views older than ``sync_interval``.

**Worst-case over-admission.** A process never admits more than ``batch``
requests on one view, and everything it admitted is charged at its next sync.
What it cannot see is what the other processes admitted on their current views
and have not yet charged: at most ``batch`` each. So with ``P`` processes
(replicas times workers) sharing a bucket, the admitted count never exceeds
what the exact limiter admits by more than ``(P - 1) * batch``:

    admitted(any window w) <= burst + w * rate + (P - 1) * batch

and the debt is paid back, so the excess does not accumulate over time. One
process alone (P = 1) is exact. Under-admission is bounded too: a process
holds at most ``batch - 1`` unspent budget, which it gives back (it is never
charged). tests/integration/test_ratelimit_redis.py drives two processes
adversarially against a real Redis and checks this bound.

A view evicted from the bounded table (more than ``max_keys`` live views)
loses its uncharged admissions (at most ``batch`` each); counted in
``evicted_pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from authz.ratelimit.base import SYNC, Item, Outcome, StoreUnavailable
from authz.ratelimit.redis_store import RedisStore
from authz.telemetry.metrics import MemoryMetrics, Metrics

log = logging.getLogger("authz.ratelimit")

MIN_VIEWS = 64  # the table holds at least the views one decision can need


@dataclass(slots=True)
class View:
    """What this process knows of one shared bucket."""

    item: Item  # the bucket (key, interval, capacity)
    batch: int
    sync_interval: float
    synced_at: float  # local clock
    debt: float  # seconds: the bucket's TAT minus now, at the sync
    available: int  # tokens available at the sync (after charging)
    budget: int  # admissions this view allows
    used: int = 0  # admitted on this view, not yet charged
    retry_at: float = 0.0  # budget 0: when the next token is due (local clock)
    syncing: asyncio.Future[None] | None = None


@dataclass(frozen=True, slots=True)
class BatchedItem:
    """An item of a batched rule: the bucket plus how many admissions one view allows."""

    item: Item
    batch: int
    sync_interval: float


class BatchedStore:
    """Views of the buckets of one Redis store, in a bounded table.

    A runtime (:mod:`authz.runtime`): :meth:`start` begins the background flush of
    views older than their ``sync_interval``; without it, views are charged only when
    a request syncs them. :meth:`aclose` stops the flush (not the Redis store).
    """

    def __init__(
        self,
        redis: RedisStore,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis = redis
        self.name = f"{redis.name}(batched)"
        self.max_keys = max_keys
        self.clock = clock
        self._views: OrderedDict[str, View] = OrderedDict()
        self._flusher: asyncio.Task[None] | None = None
        self._flush_interval = 1.0  # lowered to the shortest sync_interval seen
        self._dirty: dict[str, None] = {}  # views with admissions not yet charged
        #: Keys whose first sync is under way: requests for them wait for it rather
        #: than each install a view over the others' (uncharged) admissions.
        self._first: dict[str, asyncio.Future[None]] = {}
        m, by, name = metrics if metrics is not None else MemoryMetrics(), ("store",), redis.name
        self._syncs = m.counter(
            "authz_ratelimit_batched_syncs_total", "syncs of batched views with Redis", by
        ).labels(name)
        self._local = m.counter(
            "authz_ratelimit_batched_decisions_total", "decisions made on local views", by
        ).labels(name)
        self._evicted_pending = m.counter(
            "authz_ratelimit_batched_evicted_pending_total",
            "views evicted with admissions not yet charged",
            by,
        ).labels(name)

    @property
    def syncs(self) -> int:
        return int(getattr(self._syncs, "value", 0))

    @property
    def local_decisions(self) -> int:
        return int(getattr(self._local, "value", 0))

    @property
    def evicted_pending(self) -> int:
        return int(getattr(self._evicted_pending, "value", 0))

    # -- deciding ----------------------------------------------------------------------

    async def acquire_batched(self, items: Sequence[BatchedItem]) -> list[Outcome]:
        """Decide ``items`` together, all or nothing; raises StoreUnavailable."""
        return (await self.acquire_on_views(items))[0]

    async def acquire_on_views(
        self, items: Sequence[BatchedItem]
    ) -> tuple[list[Outcome], list[View]]:
        """:meth:`acquire_batched`, and the views decided on (for :meth:`refund_batched`)."""
        self._shorten_flush(items)
        while True:
            now = self.clock()
            waiting = [pending for b in items if (pending := self._syncing(b.item.key)) is not None]
            if waiting:  # another request is syncing one of these buckets: use its result
                await asyncio.gather(*(asyncio.shield(f) for f in waiting), return_exceptions=True)
                continue
            stale = [b for b in items if self._needs_sync(self._views.get(b.item.key), b, now)]
            if not stale:
                break
            await self._sync(stale)
        return self._decide(items, self.clock())

    def _syncing(self, key: str) -> asyncio.Future[None] | None:
        view = self._views.get(key)
        return view.syncing if view is not None else self._first.get(key)

    def _needs_sync(self, view: View | None, b: BatchedItem, now: float) -> bool:
        if view is None or now - view.synced_at >= b.sync_interval:
            return True
        return view.used >= view.budget and now >= view.retry_at

    def _decide(self, items: Sequence[BatchedItem], now: float) -> tuple[list[Outcome], list[View]]:
        self._local.inc()
        outcomes = []
        admit = True
        views = []
        for b in items:
            view = self._views[b.item.key]
            views.append(view)
            item = b.item
            left = view.budget - view.used
            elapsed = now - view.synced_at
            reset = max(view.debt + view.used * item.interval - elapsed, 0.0)
            if left > 0:
                remaining = max(view.available - view.used - 1, 0)
                outcome = Outcome(True, remaining, reset + item.interval)
            else:
                retry = max(view.retry_at - now, item.interval if view.budget else 0.0)
                outcome = Outcome(False, 0, reset, max(retry, 0.001))
            if not outcome.allowed and not item.shadow:
                admit = False
            outcomes.append(outcome)
        if admit:
            for view, outcome in zip(views, outcomes, strict=True):
                if outcome.allowed:
                    view.used += 1
                    if view.used == 1:
                        self._dirty[view.item.key] = None  # to be charged
        return outcomes, views

    def refund_batched(self, views: Sequence[View]) -> None:
        """Take back admissions made on ``views`` (a later rule denied the request).

        Only while the view is still current: once a sync replaced it, the admission
        was charged to Redis, and taking it back from the new view would leave one of
        that view's admissions uncharged (over-admission). Such a token stays spent:
        an under-admission of one, the safe side.
        """
        for view in views:
            if self._views.get(view.item.key) is view and view.used > 0:
                view.used -= 1

    # -- syncing -----------------------------------------------------------------------

    async def _sync(self, items: Sequence[BatchedItem]) -> None:
        views: list[View | None] = [self._views.get(b.item.key) for b in items]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        charged = []
        for b, view in zip(items, views, strict=True):
            if view is not None:
                view.syncing = done
            else:
                self._first[b.item.key] = done
            charged.append(view.used if view is not None else 0)
        sync_items = [
            Item(b.item.key, SYNC, b.item.interval, b.item.capacity, cost=cost)
            for b, cost in zip(items, charged, strict=True)
        ]
        try:
            outcomes = await self.redis.acquire(sync_items)
        except StoreUnavailable:
            for b, view in zip(items, views, strict=True):
                if view is not None:
                    view.syncing = None
                elif self._first.get(b.item.key) is done:
                    del self._first[b.item.key]
            done.set_result(None)
            raise
        self._syncs.inc()
        now = self.clock()
        for b, view, cost, outcome in zip(items, views, charged, outcomes, strict=True):
            if view is not None:
                view.syncing = None
                view.used -= cost  # admissions made while syncing stay for the next sync
            elif self._first.get(b.item.key) is done:
                del self._first[b.item.key]
            self._install(b, outcome, now, view.used if view is not None else 0)
        done.set_result(None)

    def _install(self, b: BatchedItem, outcome: Outcome, now: float, used: int) -> None:
        item = b.item
        available = outcome.remaining
        budget = max(min(b.batch, available), 0)
        retry_at = now
        if budget == 0:
            # the next token is due when the debt falls to (capacity - 1) intervals
            retry_at = now + max(outcome.reset - (item.capacity - 1) * item.interval, 0.0)
        view = View(
            item=item,
            batch=b.batch,
            sync_interval=b.sync_interval,
            synced_at=now,
            debt=outcome.reset,
            available=available,
            budget=budget,
            used=used,
            retry_at=retry_at,
        )
        views = self._views
        if item.key in views:
            views.move_to_end(item.key)
        else:
            while len(views) >= max(self.max_keys, MIN_VIEWS):
                old_key, old = views.popitem(last=False)
                self._dirty.pop(old_key, None)
                if old.used:
                    self._evicted_pending.inc()
        views[item.key] = view
        if used:
            self._dirty[item.key] = None
        else:
            self._dirty.pop(item.key, None)

    # -- background flush ----------------------------------------------------------------

    def _shorten_flush(self, items: Sequence[BatchedItem]) -> None:
        shortest = min(b.sync_interval for b in items)
        if shortest < self._flush_interval:
            self._flush_interval = shortest

    async def start(self) -> None:
        """Begin the background flush (once)."""
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_loop(), name=f"ratelimit-flush:{self.name}"
            )

    async def _flush_loop(self) -> None:
        """Charge views older than their sync interval, so other processes see them.

        Only views with uncharged admissions are looked at (``_dirty``), not the table."""
        while True:
            await asyncio.sleep(self._flush_interval)
            now = self.clock()
            due = []
            for key in list(self._dirty):
                view = self._views.get(key)
                if view is None or not view.used:
                    self._dirty.pop(key, None)
                elif view.syncing is None and now - view.synced_at >= view.sync_interval:
                    due.append(BatchedItem(view.item, view.batch, view.sync_interval))
            for start in range(0, len(due), 64):
                chunk = [b for b in due[start : start + 64] if self._idle(b.item.key)]
                if chunk:
                    with contextlib.suppress(StoreUnavailable):
                        await self._sync(chunk)

    def _idle(self, key: str) -> bool:
        view = self._views.get(key)
        return view is not None and view.syncing is None and view.used > 0

    def stats(self) -> dict[str, int]:
        return {
            "views": len(self._views),
            "max_keys": self.max_keys,
            "syncs": self.syncs,
            "local_decisions": self.local_decisions,
            "evicted_pending": self.evicted_pending,
        }

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher
            self._flusher = None
