"""Rate-limit rules compiled at load, and the groups that decide them.

A :class:`CompiledRule` is one rule with its key parts bound and its store item
shapes fixed. The rules of one phase are grouped by store (:class:`MemoryGroup`
in process, :class:`BatchedGroup`, :class:`RedisGroup` exact): each group decides
its rules in one call and can give back what it charged when a later group denies.
The stage that runs the groups is :mod:`authz.ratelimit.stage`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from authz.errors import RateLimitUnavailable
from authz.policy.ratelimit_config import RateLimitConfig, RuleConfig
from authz.ratelimit.base import GCRA, LEASE, Item, Outcome, StoreUnavailable
from authz.ratelimit.batched import BatchedItem, BatchedStore
from authz.ratelimit.keys import MAX_KEY_LENGTH, SEPARATOR, KeyPart, digest, key_part
from authz.ratelimit.redis_store import RedisStore
from authz.ratelimit.runtime import RateLimitRuntime, RuleCounters
from authz.stages import Context


@dataclass(slots=True)
class CompiledRule:
    config: RuleConfig
    parts: tuple[KeyPart, ...]
    counters: RuleCounters
    policy_item: str  # this rule's member of RateLimit-Policy
    mode: int = GCRA
    interval: float = 0.0
    capacity: int = 0
    redis_prefix: str = ""
    name: str = ""
    shadow: bool = False
    state_prefix: str = ""  # '"name";r='

    def values(self, ctx: Context) -> str:
        parts = self.parts
        if len(parts) == 1:
            return parts[0](ctx)
        return SEPARATOR.join([part(ctx) for part in parts])

    def memory_item(self, values: str, prefix: str = "") -> Item:
        key = f"{prefix}{self.name}{SEPARATOR}{values}"
        if len(key) > MAX_KEY_LENGTH:
            key = f"{prefix}{self.name}#{digest(values)}"
        return Item(key, self.mode, self.interval, self.capacity, self.shadow)

    def redis_item(self, values: str) -> Item:
        # hash-tagged: on a Redis Cluster the bucket's slot is the rule and its values
        key = f"{self.redis_prefix}{{{self.name}:{digest(values)}}}"
        return Item(key, self.mode, self.interval, self.capacity, self.shadow)


def compile_rule(
    rule: RuleConfig, config: RateLimitConfig, runtime: RateLimitRuntime
) -> CompiledRule:
    parts = tuple(
        key_part(p, trusted_hops=config.trusted_hops, ipv6_prefix=config.ipv6_prefix)
        for p in rule.key
    )
    if rule.concurrency:
        mode, interval, window = LEASE, rule.lease, rule.lease
    else:
        mode, interval = GCRA, rule.interval
        window = rule.burst * interval  # the time to refill the whole burst
    store = config.store(rule.store)
    return CompiledRule(
        config=rule,
        parts=parts,
        counters=runtime.counter(rule.name),
        policy_item=f'"{rule.name}";q={rule.burst};w={max(math.ceil(window - 1e-9), 1)}',
        mode=mode,
        interval=interval,
        capacity=rule.burst,
        redis_prefix=store.key_prefix if store is not None else "",
        name=rule.name,
        shadow=rule.shadow,
        state_prefix=f'"{rule.name}";r=',
    )


class Group:
    """The rules of one phase that live in one store.

    ``decide`` returns the outcomes and the items it charged; ``undo`` gives
    those back when a later group denies the request.
    """

    local = False  # True: decided in this process, no I/O (``decide_local``)

    def __init__(self, rules: list[CompiledRule], runtime: RateLimitRuntime) -> None:
        self.rules = rules
        self.runtime = runtime

    def values(self, ctx: Context) -> list[str]:
        return [rule.values(ctx) for rule in self.rules]

    def decide_local(self, ctx: Context) -> tuple[list[Outcome], Any]:
        raise NotImplementedError

    async def decide(self, ctx: Context) -> tuple[list[Outcome], Any]:
        raise NotImplementedError

    async def undo(self, charged: Any) -> None:
        raise NotImplementedError

    def fallback(self, values: Sequence[str], exc: StoreUnavailable) -> tuple[list[Outcome], Any]:
        """The shared store failed: fail closed (503) or limit in this process, per rule."""
        closed = [r for r in self.rules if not r.shadow and r.config.on_store_error == "deny"]
        if closed:
            for rule in closed:
                rule.counters.unavailable.inc()
            seconds = str(max(math.ceil(exc.retry_after), 1))
            raise RateLimitUnavailable(str(exc), headers=(("retry-after", seconds),))
        for rule in self.rules:
            rule.counters.fell_back.inc()
        items = [
            rule.memory_item(v, prefix="fallback" + SEPARATOR)
            for rule, v in zip(self.rules, values, strict=True)
        ]
        return self.runtime.memory.decide(items), ("fallback", items)


class MemoryGroup(Group):
    local = True

    def decide_local(self, ctx: Context) -> tuple[list[Outcome], Any]:
        rules = self.rules
        if len(rules) == 1:
            rule = rules[0]
            items = [rule.memory_item(rule.values(ctx))]
        else:
            items = [rule.memory_item(rule.values(ctx)) for rule in rules]
        return self.runtime.memory.decide(items), items

    async def undo(self, charged: Any) -> None:
        self.runtime.memory.refund(charged)


class RedisGroup(Group):
    def __init__(
        self, rules: list[CompiledRule], runtime: RateLimitRuntime, store: RedisStore
    ) -> None:
        super().__init__(rules, runtime)
        self.store = store

    async def decide(self, ctx: Context) -> tuple[list[Outcome], Any]:
        values = self.values(ctx)
        items = [rule.redis_item(v) for rule, v in zip(self.rules, values, strict=True)]
        try:
            return await self.store.acquire(items), items
        except StoreUnavailable as exc:
            return self.fallback(values, exc)

    async def undo(self, charged: Any) -> None:
        if isinstance(charged, tuple):  # decided locally: the store was down
            self.runtime.memory.refund(charged[1])
            return
        with contextlib.suppress(StoreUnavailable):
            await self.store.release(charged)


class BatchedGroup(Group):
    def __init__(
        self, rules: list[CompiledRule], runtime: RateLimitRuntime, store: BatchedStore
    ) -> None:
        super().__init__(rules, runtime)
        self.store = store

    async def decide(self, ctx: Context) -> tuple[list[Outcome], Any]:
        values = self.values(ctx)
        items = [
            BatchedItem(rule.redis_item(v), rule.config.batch, rule.config.sync_interval)
            for rule, v in zip(self.rules, values, strict=True)
        ]
        try:
            outcomes, views = await self.store.acquire_on_views(items)
        except StoreUnavailable as exc:
            return self.fallback(values, exc)
        return outcomes, [v for v, o in zip(views, outcomes, strict=True) if o.allowed]

    async def undo(self, charged: Any) -> None:
        if isinstance(charged, tuple):
            self.runtime.memory.refund(charged[1])
            return
        self.store.refund_batched(charged)


# --------------------------------------------------------------------------- the check
