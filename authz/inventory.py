"""The API inventory: which endpoints are really called, declared or not.

Every decision is classified (an ``observe`` stage, so it sees allows and denies):

- declared: the request matched a route; counted per route and method;
- undeclared: no route declares the path (404) or not for this method (405);
  aggregated by method and path shape (numeric, UUID and hex segments collapsed to
  ``{id}``, see :func:`authz.engine.path_shape`).

Each endpoint keeps its count, first and last time seen, the outcomes (decision
reasons), an estimate of its distinct callers (a 256-register HyperLogLog: 256
bytes, about 6.5% standard error), the query parameter names seen (undeclared
endpoints) and, in monitor mode, drift: parameters and body fields its contract
does not declare (recorded by :mod:`authz.validation.stage`).

Memory is bounded: at most ``capacity`` undeclared shapes; when full, a new shape
replaces the least counted of a few randomly sampled shapes (approximate LFU), so
a flood of one-off random paths churns among themselves and cannot push out
endpoints that are really called. Every per-endpoint set is capped too.

The inventory lives in :class:`~authz.stages.Shared`, so it survives reloads; it is
a runtime (:mod:`authz.runtime`) with nothing to start, and its counters (evicted
shapes, their requests, unrouted decisions) are in the process's metrics.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from authz import reasons as R
from authz.paths import path_shape
from authz.policy.config import RouteConfig
from authz.runtime import Stateless
from authz.stages import Check, Context, Load, Phase, Shared
from authz.telemetry.metrics import MemoryMetrics, Metrics, report_table

SHARED_NAME = "inventory"
DEFAULT_CAPACITY = 2048
MAX_NAMES = 32  # query parameter names / drift entries kept per endpoint
MAX_OUTCOMES = 16
MAX_PATH = 256
MAX_NAME = 64
_SAMPLE = 8
_UNDECLARED_REASONS = frozenset({R.UNDECLARED_ROUTE.code, R.METHOD_NOT_ALLOWED.code})


class HyperLogLog:
    """Distinct-count estimate in 2**p one-byte registers (Flajolet et al., 2007)."""

    __slots__ = ("_p", "_registers")

    def __init__(self, p: int = 8) -> None:
        self._p = p
        self._registers = bytearray(1 << p)

    def add(self, item: str) -> None:
        # surrogatepass: a str from a transport may hold lone surrogates; never raise here
        data = item.encode("utf-8", "surrogatepass")
        h = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
        index = h >> (64 - self._p)
        rest = h & ((1 << (64 - self._p)) - 1)
        rank = (64 - self._p) - rest.bit_length() + 1
        if rank > self._registers[index]:
            self._registers[index] = rank

    @property
    def registers(self) -> bytes:
        """The sketch itself: the union of two sketches is their registers' maximum."""
        return bytes(self._registers)

    @classmethod
    def union(cls, sketches: list[bytes]) -> HyperLogLog:
        """The sketch of the union of sets whose sketches (same ``p``) are given."""
        merged = cls((len(sketches[0]) if sketches else 256).bit_length() - 1)
        for sketch in sketches:
            if len(sketch) != len(merged._registers):
                raise ValueError("sketches of different sizes")
            merged._registers = bytearray(map(max, merged._registers, sketch))
        return merged

    def estimate(self) -> int:
        m = len(self._registers)
        alpha = 0.7213 / (1 + 1.079 / m)
        raw = alpha * m * m / sum(2.0**-r for r in self._registers)
        zeros = self._registers.count(0)
        if raw <= 2.5 * m and zeros:
            return round(m * math.log(m / zeros))  # linear counting: exact-ish when small
        return round(raw)


class _Capped:
    """An insertion-ordered set of at most ``limit`` short strings."""

    __slots__ = ("items", "limit")

    def __init__(self, limit: int = MAX_NAMES) -> None:
        self.items: dict[str, None] = {}
        self.limit = limit

    def add(self, name: str) -> None:
        if len(self.items) < self.limit and name not in self.items:
            self.items[name[:MAX_NAME]] = None


@dataclass(slots=True)
class Endpoint:
    method: str
    path: str  # route template (declared) or path shape (undeclared)
    declared: bool
    route: str = ""
    count: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    callers: HyperLogLog = field(default_factory=HyperLogLog)
    outcomes: dict[str, int] = field(default_factory=dict)
    query_parameters: _Capped = field(default_factory=_Capped)
    drift_query: _Capped = field(default_factory=_Capped)
    drift_body: _Capped = field(default_factory=_Capped)

    def hit(self, now: float, caller: str, reason: str) -> None:
        if not self.count:
            self.first_seen = now
        self.count += 1
        self.last_seen = now
        self.callers.add(caller)
        outcomes = self.outcomes
        if reason in outcomes:
            outcomes[reason] += 1
        elif len(outcomes) < MAX_OUTCOMES:
            outcomes[reason] = 1
        else:
            outcomes["other"] = outcomes.get("other", 0) + 1


@dataclass(frozen=True, slots=True)
class EndpointView:
    """One endpoint as reported (plain values)."""

    method: str
    path: str
    declared: bool
    route: str
    count: int
    first_seen: float
    last_seen: float
    distinct_callers: int
    outcomes: tuple[tuple[str, int], ...]
    query_parameters: tuple[str, ...]
    drift_query_parameters: tuple[str, ...]
    drift_body_fields: tuple[str, ...]
    #: the distinct-callers sketch (:attr:`HyperLogLog.registers`), for merging
    callers_sketch: bytes = b""


@dataclass(frozen=True, slots=True)
class InventoryView:
    endpoints: tuple[EndpointView, ...]
    capacity: int
    evicted: int
    evicted_requests: int
    unrouted: int
    started: float
    generated: float


class Inventory(Stateless):
    """Declared and undeclared endpoints seen since the service started (bounded)."""

    name = "inventory"

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.capacity = capacity
        self._clock = clock
        self._rng = rng or random.Random()
        self._declared: dict[tuple[str, str, str], Endpoint] = {}
        self._undeclared: dict[tuple[str, str], Endpoint] = {}
        self._keys: list[tuple[str, str]] = []  # undeclared keys, for sampling
        self._slot: dict[tuple[str, str], int] = {}
        m = metrics if metrics is not None else MemoryMetrics()
        report_table(m, "inventory_undeclared", self._undeclared.__len__, capacity)
        report_table(m, "inventory_declared", self._declared.__len__, capacity)
        self._evicted = m.counter(
            "authz_inventory_evicted_total", "undeclared path shapes evicted (table full)"
        ).labels()
        self._evicted_requests = m.counter(
            "authz_inventory_evicted_requests_total", "requests counted by the evicted shapes"
        ).labels()
        #: decisions neither routed nor undeclared (invalid path, request-phase denials)
        self.unrouted_counter = m.counter(
            "authz_inventory_unrouted_total", "decisions before a route was known, not undeclared"
        ).labels()
        self.started = clock()

    @property
    def evicted(self) -> int:
        return int(getattr(self._evicted, "value", 0))

    @property
    def evicted_requests(self) -> int:
        return int(getattr(self._evicted_requests, "value", 0))

    @property
    def unrouted(self) -> int:
        return int(getattr(self.unrouted_counter, "value", 0))

    def __len__(self) -> int:
        return len(self._declared) + len(self._undeclared)

    # -- recording -------------------------------------------------------------------

    def _route_entry(self, route: RouteConfig, method: str) -> Endpoint:
        key = (route.name, method[:16], route.path)
        entry = self._declared.get(key)
        if entry is None:
            entry = Endpoint(key[1], route.path, True, route.name)
            # Routes come from the policy, but reloads may add new ones forever.
            if len(self._declared) < self.capacity:
                self._declared[key] = entry
        return entry

    def declared(self, route: RouteConfig, method: str, caller: str, reason: str) -> Endpoint:
        entry = self._route_entry(route, method)
        entry.hit(self._clock(), caller, reason)
        return entry

    def undeclared(
        self, method: str, path: str, caller: str, reason: str, query: str = ""
    ) -> Endpoint:
        shape = path_shape(path)
        if len(shape) > MAX_PATH:
            shape = shape[:MAX_PATH] + "..."
        method = method[:16]
        key = (method, shape)
        entry = self._undeclared.get(key)
        if entry is None:
            if len(self._undeclared) >= self.capacity:
                self._evict_one()
            entry = self._undeclared[key] = Endpoint(method, shape, False)
            self._slot[key] = len(self._keys)
            self._keys.append(key)
        entry.hit(self._clock(), caller, reason)
        if query:
            names = entry.query_parameters
            for part in query.split("&", MAX_NAMES)[:MAX_NAMES]:
                name = part.split("=", 1)[0]
                if name:
                    names.add(name)
        return entry

    def _evict_one(self) -> None:
        keys = self._keys
        sample = [keys[self._rng.randrange(len(keys))] for _ in range(_SAMPLE)]
        victim = min(sample, key=lambda k: self._undeclared[k].count)
        self._evicted.inc()
        self._evicted_requests.inc(self._undeclared.pop(victim).count)
        # swap-remove from the sampling list
        index = self._slot.pop(victim)
        last = keys.pop()
        if last != victim:
            keys[index] = last
            self._slot[last] = index

    def drift(self, route: RouteConfig, method: str, *, query: list[str], body: list[str]) -> None:
        """Parameters and body fields that ``route``'s contract does not declare."""
        entry = self._route_entry(route, method)
        for name in query:
            entry.drift_query.add(name)
        for shape in body:
            entry.drift_body.add(shape)

    # -- reading ---------------------------------------------------------------------

    def view(self) -> InventoryView:
        endpoints = [
            EndpointView(
                method=e.method,
                path=e.path,
                declared=e.declared,
                route=e.route,
                count=e.count,
                first_seen=e.first_seen,
                last_seen=e.last_seen,
                distinct_callers=e.callers.estimate(),
                outcomes=tuple(sorted(e.outcomes.items())),
                query_parameters=tuple(e.query_parameters.items),
                drift_query_parameters=tuple(e.drift_query.items),
                drift_body_fields=tuple(e.drift_body.items),
                callers_sketch=e.callers.registers,
            )
            for e in (*self._declared.values(), *self._undeclared.values())
        ]
        endpoints.sort(key=lambda e: (not e.declared, -e.count, e.path, e.method))
        return InventoryView(
            endpoints=tuple(endpoints),
            capacity=self.capacity,
            evicted=self.evicted,
            evicted_requests=self.evicted_requests,
            unrouted=self.unrouted,
            started=self.started,
            generated=self._clock(),
        )


def shared_inventory(shared: Shared) -> Inventory:
    return shared.runtime(SHARED_NAME, lambda: Inventory(metrics=shared.metrics))


def caller_of(ctx: Context) -> str:
    identity = ctx.identity
    if identity.kind != "anonymous":
        return f"{identity.kind}:{identity.subject}"
    return f"addr:{ctx.request.source_address}"


class InventoryStage:
    """Feeds every decision into the inventory (``observe`` phase)."""

    name = "inventory"
    phase: Phase = "observe"

    def build(self, load: Load, route: RouteConfig | None) -> Check:
        inventory = shared_inventory(load.shared)
        unrouted = inventory.unrouted_counter

        async def observe(ctx: Context) -> None:
            decision = ctx.decision
            reason = decision.reason if decision is not None else ""
            method = ctx.request.method
            if ctx.route is not None:
                inventory.declared(ctx.route, method, caller_of(ctx), reason)
            elif ctx.path and reason in _UNDECLARED_REASONS:
                inventory.undeclared(method, ctx.path, caller_of(ctx), reason, ctx.query)
            else:
                unrouted.inc()

        return observe
