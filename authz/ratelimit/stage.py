"""The rate-limit and load-shedding stages, and the state they share across reloads.

Where each rule runs (:func:`phase_of`), cheapest first:

- ``request`` (once per policy, before routing): global rules keyed only by
  client address, method or header. They hold for undeclared paths too, and a
  flood of bad tokens from one address is throttled before any JWT is parsed.
- ``pre`` (per route, before identity): the route's own rules with such keys,
  and global rules keyed by ``route``. Load shedding by priority runs here first.
- ``post`` (per route, after authorization): rules keyed by identity (subject,
  API key, SPIFFE ID, issuer, claims) and every concurrency cap, so a lease is
  only taken by a request that goes upstream.

The rules of one phase are decided together: the in-process ones first, then
batched, then exact Redis (one script call per store, one round trip). If any
enforced rule denies, nothing is charged anywhere (earlier stores are refunded).
Shadow rules are evaluated and counted, never enforced.

Headers (draft-ietf-httpapi-ratelimit-headers-09/10, Structured Fields lists):
``RateLimit-Policy: "name";q=<burst>;w=<seconds to refill it all>`` and
``RateLimit: "name";r=<remaining>;t=<seconds until full again>`` on the client's
response (allow and deny), ``Retry-After`` on a deny, and the RateLimit value
for the upstream in ``x-authz-ratelimit`` (the ``headers.ratelimit`` name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from authz.errors import ConcurrencyLimited, Overloaded, RateLimited, RateLimitUnavailable
from authz.policy.config import RouteConfig
from authz.policy.ratelimit_config import (
    MEMORY_STORE,
    RateLimitConfig,
    RedisStoreConfig,
    RuleConfig,
)
from authz.ratelimit.adaptive import AdaptiveShaper
from authz.ratelimit.base import GCRA, LEASE, Item, Outcome, StoreUnavailable
from authz.ratelimit.batched import BatchedItem, BatchedStore
from authz.ratelimit.keys import MAX_KEY_LENGTH, SEPARATOR, KeyPart, digest, key_part
from authz.ratelimit.memory import BYTES_PER_KEY, MemoryStore
from authz.ratelimit.overload import RANK, OverloadMonitor
from authz.ratelimit.redis_store import RedisStore
from authz.runtime import Runtimes
from authz.stages import Check, Context, Load, Phase, Shared
from authz.telemetry.metrics import Counter, MemoryMetrics, Metrics

log = logging.getLogger("authz.ratelimit")

SHARED_NAME = "ratelimit"
STATS_LOG_INTERVAL = 60.0


def phase_of(rule: RuleConfig) -> Phase:
    """Where a rule runs: as early as the values its key needs are known."""
    if rule.concurrency or rule.needs_identity:
        return "post"
    if rule.route is not None or rule.needs_route:
        return "pre"
    return "request"


# --------------------------------------------------------------------------- shared state


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
        self.memory = MemoryStore(metrics=self.metrics)
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
        key = f"{self.redis_prefix}{self.name}:{digest(values)}"
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


# --------------------------------------------------------------------------- groups


class _Group:
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


class _MemoryGroup(_Group):
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


class _RedisGroup(_Group):
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


class _BatchedGroup(_Group):
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


def _merge_header(headers: list[tuple[str, str]], name: str, value: str) -> None:
    """Add list members to a header already set by an earlier phase (one field line)."""
    for i, (key, old) in enumerate(headers):
        if key == name:
            headers[i] = (key, f"{old}, {value}")
            return
    headers.append((name, value))


class RateLimitCheck:
    """The rules of one phase (of one route), decided together."""

    def __init__(
        self,
        rules: list[CompiledRule],
        runtime: RateLimitRuntime,
        config: RateLimitConfig,
        upstream_header: str,
    ) -> None:
        self.rules = rules
        self.response_headers = config.response_headers
        self.upstream_header = upstream_header
        by_store: dict[tuple[str, str], list[CompiledRule]] = {}
        for rule in rules:
            kind = "batched" if rule.config.batch else "exact"
            by_store.setdefault((kind, rule.config.store), []).append(rule)
        groups: list[tuple[int, _Group]] = []
        for (kind, store_name), members in by_store.items():
            store = config.store(store_name)
            if store is None:
                groups.append((0, _MemoryGroup(members, runtime)))
            elif kind == "batched":
                groups.append((1, _BatchedGroup(members, runtime, runtime.batched_store(store))))
            else:
                groups.append((2, _RedisGroup(members, runtime, runtime.redis_store(store))))
        # cheapest first: a local denial spares the round trip
        self.groups = [g for _, g in sorted(groups, key=lambda pair: pair[0])]
        enforced = [r for r in rules if not r.shadow]
        self.policy_header = ", ".join(r.policy_item for r in enforced)

    async def __call__(self, ctx: Context) -> None:
        charged: list[tuple[_Group, Any]] = []
        decided: list[tuple[CompiledRule, Outcome]] = []
        for group in self.groups:
            if group.local:
                outcomes, items = group.decide_local(ctx)
            else:
                try:
                    outcomes, items = await group.decide(ctx)
                except RateLimitUnavailable:
                    await _undo(charged)
                    raise
            denied = False
            for rule, outcome in zip(group.rules, outcomes, strict=True):
                decided.append((rule, outcome))
                if not outcome.allowed:
                    if rule.shadow:
                        if not ctx.explain:
                            rule.counters.shadow_limited.inc()
                    else:
                        denied = True
            if denied:
                await _undo(charged)
                self._deny(ctx, decided)
            charged.append((group, items))
        if ctx.explain:  # a dry run: give back what it took, count nothing
            await _undo(charged)
        self._allow(ctx, decided)

    def _allow(self, ctx: Context, decided: list[tuple[CompiledRule, Outcome]]) -> None:
        states = []
        for rule, outcome in decided:
            if not rule.shadow:
                if not ctx.explain:
                    rule.counters.admitted.inc()
                reset = outcome.reset
                t = math.ceil(reset - 1e-9) if reset > 0 else 0
                states.append(f"{rule.state_prefix}{outcome.remaining};t={t}")
        if not states:
            return
        state = states[0] if len(states) == 1 else ", ".join(states)
        if self.response_headers:
            _merge_header(ctx.response_headers, "ratelimit-policy", self.policy_header)
            _merge_header(ctx.response_headers, "ratelimit", state)
        _merge_header(ctx.upstream_headers, self.upstream_header, state)

    def _deny(self, ctx: Context, decided: list[tuple[CompiledRule, Outcome]]) -> None:
        denying = [(r, o) for r, o in decided if not o.allowed and not r.shadow]
        for rule, _ in denying:
            if not ctx.explain:
                rule.counters.limited.inc()
        retry = max(math.ceil(o.retry_after - 1e-9) for _, o in denying)
        if self.response_headers:
            policies = ", ".join(r.policy_item for r, _ in denying)
            _merge_header(ctx.response_headers, "ratelimit-policy", policies)
            _merge_header(
                ctx.response_headers,
                "ratelimit",
                ", ".join(f'"{r.name}";r=0;t={_seconds(o.reset)}' for r, o in denying),
            )
        headers = (("retry-after", str(max(retry, 1))),)
        names = ", ".join(r.name for r, _ in denying)
        exc: ConcurrencyLimited | RateLimited
        if all(r.mode == LEASE for r, _ in denying):
            exc = ConcurrencyLimited(f"concurrency cap reached: {names}", headers=headers)
        else:
            exc = RateLimited(f"rate limit reached: {names}", headers=headers)
        exc.element = f"rate_limits: {names}"
        raise exc

    def describe(self) -> str:
        """The rules, for explain."""
        return "rate_limits: " + ", ".join(r.name for r in self.rules)


def _seconds(value: float) -> int:
    return max(math.ceil(value - 1e-9), 0)


async def _undo(charged: list[tuple[_Group, Any]]) -> None:
    for group, items in reversed(charged):
        await group.undo(items)


# --------------------------------------------------------------------------- the stages


@dataclass
class RateLimitStage:
    """Builds the rate-limit check of one phase (see :func:`phase_of`)."""

    phase: Phase
    name: str = field(default="ratelimit")

    def build(self, load: Load, route: RouteConfig | None) -> Check | None:
        policy, shared = load.config, load.shared
        config = policy.rate_limits
        rules = [r for r in config.rules if phase_of(r) == self.phase]
        if route is not None:
            rules += [r for r in route.rate_limits if phase_of(r) == self.phase]
        elif self.phase != "request":
            return None
        if not rules:
            return None
        runtime = RateLimitRuntime.of(shared)
        runtime.configure(config)
        compiled = [compile_rule(r, config, runtime) for r in rules]
        return RateLimitCheck(compiled, runtime, config, policy.headers.ratelimit)


@dataclass
class ShedStage:
    """Sheds ``background`` then ``normal`` routes under overload (503 ``overloaded``)."""

    name: str = "shed"
    phase: Phase = "pre"

    def build(self, load: Load, route: RouteConfig | None) -> Check | None:
        policy, shared = load.config, load.shared
        overload = policy.rate_limits.overload
        if route is None or not overload.enabled or route.priority == "critical":
            return None
        runtime = RateLimitRuntime.of(shared)
        runtime.configure(policy.rate_limits)
        monitor = runtime.overload
        rank = RANK[route.priority]
        priority = route.priority
        shed_counter = monitor.counter(priority)
        headers = (("retry-after", str(max(math.ceil(overload.retry_after), 1))),)
        note_shed: Callable[[str], None] | None = None
        if overload.adaptive is not None:
            shaper = AdaptiveShaper.of(shared, overload.adaptive)
            monitor.adaptive = shaper
            note_shed = shaper.note_shed
        route_name = route.name

        async def shed(ctx: Context) -> None:
            if monitor.level(shared.in_flight, overload) >= rank:
                shed_counter.inc()
                if note_shed is not None:
                    note_shed(route_name)  # adaptive: what shedding holds back
                raise Overloaded(f"shedding {priority} routes", headers=headers)

        return shed


#: In the order they run within a phase: shedding first (cheapest), then limits.
RATE_LIMIT_STAGES: list[ShedStage | RateLimitStage] = [
    ShedStage(),
    RateLimitStage("request"),
    RateLimitStage("pre"),
    RateLimitStage("post"),
]
