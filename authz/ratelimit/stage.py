"""The rate-limit and load-shedding stages (their state across reloads:
:mod:`authz.ratelimit.runtime`; the compiled rules and store groups:
:mod:`authz.ratelimit.rules`).

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

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from authz.errors import ConcurrencyLimited, Overloaded, RateLimited, RateLimitUnavailable
from authz.policy.config import RouteConfig
from authz.policy.ratelimit_config import (
    RateLimitConfig,
    RuleConfig,
)
from authz.ratelimit.adaptive import AdaptiveShaper
from authz.ratelimit.base import LEASE, Outcome
from authz.ratelimit.overload import RANK
from authz.ratelimit.rules import (
    BatchedGroup,
    CompiledRule,
    Group,
    MemoryGroup,
    RedisGroup,
    compile_rule,
)
from authz.ratelimit.runtime import RateLimitRuntime
from authz.stages import Check, Context, Load, Phase

log = logging.getLogger("authz.ratelimit")


def phase_of(rule: RuleConfig) -> Phase:
    """Where a rule runs: as early as the values its key needs are known."""
    if rule.concurrency or rule.needs_identity:
        return "post"
    if rule.route is not None or rule.needs_route:
        return "pre"
    return "request"


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
        groups: list[tuple[int, Group]] = []
        for (kind, store_name), members in by_store.items():
            store = config.store(store_name)
            if store is None:
                groups.append((0, MemoryGroup(members, runtime)))
            elif kind == "batched":
                groups.append((1, BatchedGroup(members, runtime, runtime.batched_store(store))))
            else:
                groups.append((2, RedisGroup(members, runtime, runtime.redis_store(store))))
        # cheapest first: a local denial spares the round trip
        self.groups = [g for _, g in sorted(groups, key=lambda pair: pair[0])]
        enforced = [r for r in rules if not r.shadow]
        self.policy_header = ", ".join(r.policy_item for r in enforced)

    async def __call__(self, ctx: Context) -> None:
        charged: list[tuple[Group, Any]] = []
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


async def _undo(charged: list[tuple[Group, Any]]) -> None:
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
