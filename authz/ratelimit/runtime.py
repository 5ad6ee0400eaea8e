"""The rate-limit state that outlives a policy: stores, rule counters and the
overload monitor, one :class:`RateLimitRuntime` per process (``Shared.runtime``),
kept across reloads. The stages that use it are :mod:`authz.ratelimit.stage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from authz.policy.ratelimit_config import MEMORY_STORE, RateLimitConfig, RedisStoreConfig
from authz.ratelimit.batched import BatchedStore
from authz.ratelimit.memory import BYTES_PER_KEY, MemoryStore
from authz.ratelimit.overload import OverloadMonitor
from authz.ratelimit.redis_store import RedisStore
from authz.runtime import Runtimes
from authz.stages import Shared
from authz.telemetry.metrics import Counter, MemoryMetrics, Metrics

log = logging.getLogger("authz.ratelimit")

SHARED_NAME = "ratelimit"
STATS_LOG_INTERVAL = 60.0


#: Series of the rule counters: five per rule, rules are bounded by the policy file.
MAX_RULE_SERIES = 5 * 2048
#: What a rule counts, each a series of ``authz_ratelimit_rule_total{rule, outcome}``:
#: admitted; limited; shadow_limited (a shadow rule would have denied); fell_back
#: (decided by a local bucket: the shared store was down); unavailable (denied 503:
#: the shared store was down and the rule fails closed).
RULE_OUTCOMES = ("admitted", "limited", "shadow_limited", "fell_back", "unavailable")


class RuleCounters:
    """The pre-bound counters of one rule (in the metrics)."""

    __slots__ = RULE_OUTCOMES

    def __init__(self, metrics: Metrics, rule: str) -> None:
        family = metrics.counter(
            "authz_ratelimit_rule_total",
            "rate-limit rule outcomes",
            ("rule", "outcome"),
            max_series=MAX_RULE_SERIES,
        )
        self.admitted: Counter = family.labels(rule, "admitted")
        self.limited: Counter = family.labels(rule, "limited")
        self.shadow_limited: Counter = family.labels(rule, "shadow_limited")
        self.fell_back: Counter = family.labels(rule, "fell_back")
        self.unavailable: Counter = family.labels(rule, "unavailable")

    def values(self) -> dict[str, int]:
        return {o: int(getattr(getattr(self, o), "value", 0)) for o in RULE_OUTCOMES}


class RateLimitRuntime:
    """Stores, counters and the overload monitor; one per process, kept across reloads.

    A runtime (:mod:`authz.runtime`): building a policy registers it and the Redis and
    batched stores its rules name in ``runtimes`` (the process's, ``Shared.runtimes``)
    and starts nothing; ``start`` begins the minutely stats line, and each store is
    started and closed by the registry (a batched store after, so before, its Redis).
    """

    name = "ratelimit"

    def __init__(self, metrics: Metrics | None = None, runtimes: Runtimes | None = None) -> None:
        self.metrics = metrics if metrics is not None else MemoryMetrics()
        #: where the stores are registered (a private registry when none is given)
        self.runtimes = runtimes if runtimes is not None else Runtimes()
        self.memory = MemoryStore(metrics=self.metrics, table="ratelimit_buckets")
        self.redis: dict[RedisStoreConfig, RedisStore] = {}
        self.batched: dict[RedisStoreConfig, BatchedStore] = {}
        self.overload = OverloadMonitor(metrics=self.metrics)
        self.counters: dict[str, RuleCounters] = {}
        self.config: RateLimitConfig | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._last_logged = ""

    @staticmethod
    def of(shared: Shared) -> RateLimitRuntime:
        return shared.runtime(
            SHARED_NAME, lambda: RateLimitRuntime(shared.metrics, shared.runtimes)
        )

    def configure(self, config: RateLimitConfig) -> None:
        """Apply a (re)loaded policy's bound on in-process keys."""
        if config is self.config:
            return
        self.config = config
        self.memory.max_keys = config.max_keys
        for batched in self.batched.values():
            batched.max_keys = config.max_keys
        # (called only by stages that have limits or shedding to apply)
        log.info(
            "ratelimit: in-process buckets bounded at %d keys (about %.0f MB) per table; "
            "stores: %s",
            config.max_keys,
            config.max_keys * BYTES_PER_KEY / 1e6,
            ", ".join([MEMORY_STORE, *(f"{s.name} (redis)" for s in config.stores)]),
        )

    def counter(self, rule: str) -> RuleCounters:
        found = self.counters.get(rule)
        if found is None:
            found = self.counters[rule] = RuleCounters(self.metrics, rule)
        return found

    def redis_store(self, config: RedisStoreConfig) -> RedisStore:
        found = self.redis.get(config)
        if found is None:
            found = self.redis[config] = RedisStore(config, metrics=self.metrics)
        self.runtimes.add(found)  # again for every policy that names it: once
        return found

    def batched_store(self, config: RedisStoreConfig) -> BatchedStore:
        found = self.batched.get(config)
        if found is None:
            max_keys = self.config.max_keys if self.config else 100_000
            redis = self.redis_store(config)
            found = BatchedStore(redis, max_keys=max_keys, metrics=self.metrics)
            self.batched[config] = found
        else:
            self.redis_store(config)  # registered before it: closed after it
        self.runtimes.add(found)
        return found

    def stats(self) -> dict[str, Any]:
        """Everything counted, as plain data (logged every minute when it changes)."""
        return {
            "memory": self.memory.stats(),
            "redis": {cfg.name: store.stats() for cfg, store in self.redis.items()},
            "batched": {cfg.name: store.stats() for cfg, store in self.batched.items()},
            "overload": self.overload.stats(),
            "rules": {name: c.values() for name, c in sorted(self.counters.items())},
        }

    async def start(self) -> None:
        """Log the stats every minute (when they changed)."""
        if self._stats_task is None or self._stats_task.done():
            self._stats_task = asyncio.get_running_loop().create_task(
                self._log_stats(), name="ratelimit-stats"
            )

    async def _log_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_LOG_INTERVAL)
            self.log_stats()

    def log_stats(self) -> None:
        text = json.dumps(self.stats(), sort_keys=True, separators=(",", ":"))
        if text != self._last_logged:
            self._last_logged = text
            log.info("ratelimit stats %s", text)

    async def aclose(self) -> None:
        """Stop the stats line and log it once more (the stores are the registry's)."""
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
            self._stats_task = None
        self.log_stats()


# --------------------------------------------------------------------------- compiled rules
