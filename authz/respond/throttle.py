"""Throttles: a tighter limit for one caller for a TTL, through the rate-limit stores.

A throttled caller's requests are charged to a GCRA bucket of its own (key
``enforce|throttle|<kind>|<target>``) of ``enforcement.throttle`` (``requests`` per
``per``): in the process's in-process store (:class:`~authz.ratelimit.memory.MemoryStore`,
the rate-limit runtime's), or, when the enforcement store is Redis, in a Redis
rate-limit store (:class:`~authz.ratelimit.redis_store.RedisStore`) so that every
replica counts into one bucket; if Redis fails the bucket in this process decides.
Once spent: 429 caller_throttled with Retry-After. Explain gives the charge back.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable

from authz.errors import CallerThrottled
from authz.policy.enforcement_config import EnforcementConfig, ThrottleConfig
from authz.policy.ratelimit_config import RedisStoreConfig
from authz.ratelimit.base import GCRA, Item, StoreUnavailable
from authz.ratelimit.memory import MemoryStore
from authz.ratelimit.redis_store import RedisStore
from authz.respond.table import Entry
from authz.telemetry.metrics import Counter


class Throttler:
    """Charges throttled callers to their own buckets (see the module docstring)."""

    def __init__(self, memory: MemoryStore, shared: RedisStore | None = None) -> None:
        self.memory = memory
        self.shared = shared
        self.denied: Counter | None = None

    def charge(
        self, entry: Entry, throttle: ThrottleConfig, now: float, explain: bool
    ) -> Awaitable[None] | None:
        """Admit one request of ``entry``'s caller or raise CallerThrottled; an
        awaitable only when the bucket is in Redis."""
        item = Item(f"enforce|{entry.key}", GCRA, throttle.interval, throttle.requests)
        if self.shared is not None:
            return self._shared(entry, throttle, item, now, explain)
        outcome = self.memory.decide([item])[0]
        if not outcome.allowed:
            raise self._throttled(entry, throttle, outcome.retry_after, now, explain)
        if explain:
            self.memory.refund([item])
        return None

    async def _shared(
        self, entry: Entry, throttle: ThrottleConfig, item: Item, now: float, explain: bool
    ) -> None:
        assert self.shared is not None
        try:
            outcome = (await self.shared.acquire([item]))[0]
            if outcome.allowed and explain:
                await self.shared.release([item])
        except StoreUnavailable:  # the bucket in this process instead
            outcome = self.memory.decide([item])[0]
            if outcome.allowed and explain:
                self.memory.refund([item])
        if not outcome.allowed:
            raise self._throttled(entry, throttle, outcome.retry_after, now, explain)

    def _throttled(
        self,
        entry: Entry,
        throttle: ThrottleConfig,
        retry_after: float,
        now: float,
        explain: bool = False,
    ) -> CallerThrottled:
        if self.denied is not None and not explain:
            self.denied.inc()
        seconds = str(max(math.ceil(retry_after - 1e-9), 1))
        exc = CallerThrottled(
            f"throttled: {entry.target_kind}", headers=(("retry-after", seconds),)
        )
        exc.element = f"{entry.describe(now)} ({throttle.requests} per {throttle.per:g}s)"
        return exc


def throttle_store_config(config: EnforcementConfig) -> RedisStoreConfig | None:
    """The rate-limit store of throttles when the enforcement store is Redis."""
    store = config.store
    if store is None:
        return None
    return RedisStoreConfig(
        name="enforcement",
        url=store.url,
        timeout=store.timeout,
        key_prefix=f"{store.key_prefix}rl:",
        retry_interval=store.retry_interval,
    )
