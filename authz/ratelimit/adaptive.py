"""Adaptive shedding: an overload level from the upstream's health and this service's load.

The fixed thresholds of :mod:`authz.ratelimit.overload` (decisions in flight, the
operator's file) say nothing about the upstream. This runtime listens to Envoy's
access-log feed (:class:`~authz.detect.events.ResponseHub`) and derives a level from it,
which :class:`~authz.ratelimit.overload.OverloadMonitor` combines with the others (the
strongest wins), so the shed stage sheds ``background`` and then ``normal`` routes;
``critical`` routes are never shed (the stage is not even built for them).

Algorithm (the limit's arithmetic is in :mod:`authz.ratelimit.gradient`). Every
``interval`` (default 1 s), from the window's entries, per route:

- entries that reached the upstream: their count, their upstream time (Envoy's first
  byte sent to the last byte back) and how many were a 5xx; an entry Envoy answered
  itself with a 5xx because of the upstream (flags UF, UH, UO, UT, UC, UR, URX) is an
  error too; anything else Envoy or authz answered (a deny, a shed request) is left
  out, so shedding never feeds itself;
- the route's gradient against its own latency baseline, and its error share.

The upstream's concurrency the window saw is Little's law: ``D = sum of upstream time /
window length`` (requests in flight at the upstream, on average). The gradient
limit ``L`` moves (down when latency rises past ``tolerance`` * its baseline or a
route's 5xx share passes ``error_rate``; up by sqrt(L), and to at least ``headroom`` * D,
while healthy). The demand compared with ``L`` is what would reach the upstream if
nothing were shed: ``D`` plus, for every request shed in the window, its route's mean
upstream time (so a shed class comes back only once ``L`` has room for it, rather
than flapping), plus, at each check, this process's decisions in flight
(:attr:`~authz.stages.Shared.in_flight`: requests about to reach the upstream, seen at
once rather than a window later). Then:

- demand <= L: level 0; L < demand <= ``normal_above`` * L: level 1 (shed background);
  above: level 2 (shed normal too).

The level costs one comparison or two per check (the window's figures are computed
in the background). When the feed goes quiet for ``stale_after`` (default 5 s), the
adaptive level is 0: losing the feed turns adaptive shedding off, it never sheds
blind. Each process shapes from the entries it receives: with ``--workers N`` only the
workers holding one of Envoy's access-log streams shed adaptively.

Gauges: ``authz_adaptive_limit``, ``authz_adaptive_concurrency`` (D),
``authz_adaptive_demand`` (offered), ``authz_adaptive_gradient`` (G),
``authz_adaptive_level`` (without in-flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from authz.detect.events import RESPONSE_HUB, ResponseHub, ResponseObservation
from authz.policy.ratelimit_config import AdaptiveConfig
from authz.ratelimit.gradient import GradientLimit, RouteBaseline, ewma_weight
from authz.telemetry.metrics import MemoryMetrics, Metrics

log = logging.getLogger("authz.ratelimit")

#: The :class:`~authz.stages.Shared` key of the process's shaper.
ADAPTIVE = "ratelimit.adaptive"
#: Envoy's flags for a 5xx it answered itself because of the upstream.
UPSTREAM_FAILURE_FLAGS = frozenset({"UF", "UH", "UO", "UT", "UC", "UR", "URX"})
#: The route bucket past ``max_routes``.
OTHER_ROUTE = "_other"
_NAMES = {0: "nothing", 1: "background routes", 2: "normal and background routes"}


def _upstream_failure(flags: str) -> bool:
    return any(f in UPSTREAM_FAILURE_FLAGS for f in flags.split(","))


class _Route:
    """One route's window (reset every interval) and its latency baseline."""

    __slots__ = ("baseline", "entries", "errors", "latency", "samples", "shed")

    def __init__(self) -> None:
        self.baseline = RouteBaseline()
        self.reset()

    def reset(self) -> None:
        self.entries = 0  # reached the upstream, or failed because of it
        self.samples = 0  # of those, with an upstream time
        self.latency = 0.0  # sum of upstream times, ms
        self.errors = 0
        self.shed = 0  # shed by this process in the window

    def mean_ms(self) -> float:
        return self.latency / self.samples if self.samples else self.baseline.baseline


class AdaptiveShaper:
    """The adaptive overload level; a runtime (``start`` subscribes and ticks)."""

    name = ADAPTIVE

    def __init__(
        self,
        hub: ResponseHub,
        config: AdaptiveConfig,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.config = config
        self.gradient_limit = GradientLimit(config)
        self._routes: dict[str, _Route] = {}
        self._window_start = clock()
        self._quiet = math.inf  # seconds without any entry (none heard yet)
        self._entries = 0  # entries in the current window (any kind)
        #: the window's figures, read by :meth:`level`
        self.concurrency = 0.0
        self.demand = 0.0
        self.gradient = 1.0
        self.stale = True  # nothing heard yet
        self._background_bound = math.inf
        self._normal_bound = math.inf
        self._level = 0
        self._task: asyncio.Task[None] | None = None
        m = metrics if metrics is not None else MemoryMetrics()
        self._g_limit = m.gauge(
            "authz_adaptive_limit", "adaptive upstream concurrency limit"
        ).labels()
        self._g_concurrency = m.gauge(
            "authz_adaptive_concurrency", "upstream requests in flight (Little's law, last window)"
        ).labels()
        self._g_demand = m.gauge(
            "authz_adaptive_demand", "upstream concurrency if nothing were shed (last window)"
        ).labels()
        self._g_gradient = m.gauge(
            "authz_adaptive_gradient", "latency gradient (1: normal)"
        ).labels()
        self._g_level = m.gauge("authz_adaptive_level", "adaptive overload level").labels()
        self._g_limit.set(self.gradient_limit.limit)

    @classmethod
    def of(cls, shared: Any, config: AdaptiveConfig) -> AdaptiveShaper:
        """The process's shaper (registered in ``shared.runtimes``, not started)."""
        hub = shared.get(RESPONSE_HUB, ResponseHub)
        shaper: AdaptiveShaper = shared.runtime(
            ADAPTIVE, lambda: cls(hub, config, metrics=shared.metrics)
        )
        return shaper

    @property
    def limit(self) -> float:
        return self.gradient_limit.limit

    # -- the request path ------------------------------------------------------------

    def level(self, in_flight: int, config: AdaptiveConfig) -> int:
        """0, 1 (shed background) or 2 (shed normal too), for the serving policy's
        ``config`` (adopted when it changed: the serving policy drives the shaper)."""
        if config is not self.config:
            self.configure(config)
        demand = self.demand + in_flight
        if demand > self._normal_bound:
            return 2
        if demand > self._background_bound:
            return 1
        return 0

    def note_shed(self, route: str) -> None:
        """A request of ``route`` was shed (the shed stage calls this; O(1))."""
        self._route(route).shed += 1

    def configure(self, config: AdaptiveConfig) -> None:
        if config == self.config:
            self.config = config
            return
        limit = min(max(self.gradient_limit.limit, config.min_limit), config.max_limit)
        self.config = config
        self.gradient_limit = GradientLimit(config)
        self.gradient_limit.limit = limit
        self._set_bounds()

    # -- the feed ----------------------------------------------------------------------

    def _route(self, name: str) -> _Route:
        found = self._routes.get(name)
        if found is None:
            if len(self._routes) >= self.config.max_routes - 1:  # one left for _other
                name = OTHER_ROUTE
                found = self._routes.get(name)
                if found is not None:
                    return found
            found = self._routes[name] = _Route()
        return found

    def on_response(self, observation: ResponseObservation) -> None:
        """One access-log entry (from the feed's drain task): O(1)."""
        self._entries += 1
        if observation.upstream:
            route = self._route(observation.route)
            route.entries += 1
            if observation.upstream_ms >= 0:
                route.samples += 1
                route.latency += observation.upstream_ms
            if observation.status >= 500:
                route.errors += 1
        elif (
            observation.status >= 500
            and observation.response_flags
            and _upstream_failure(observation.response_flags)
        ):
            route = self._route(observation.route)
            route.entries += 1
            route.errors += 1

    # -- the window --------------------------------------------------------------------

    def tick(self) -> None:
        """Close the window: compute D, G, E, move the limit, set the level's bounds."""
        c = self.config
        now = self.clock()
        elapsed_ms = max((now - self._window_start) * 1000.0, 1.0)
        self._window_start = now
        if self._entries:
            self._quiet = 0.0
        else:
            self._quiet += elapsed_ms / 1000.0
        self._entries = 0
        weight = ewma_weight(c)
        admitted = offered = 0.0
        weighted = weights = 0.0
        worst_errors = 0.0
        for route in self._routes.values():
            admitted += route.latency
            offered += route.latency + route.shed * route.mean_ms()
            if route.samples >= c.min_samples:
                g = route.baseline.gradient(route.latency / route.samples, weight, c.tolerance)
                weighted += g * route.samples
                weights += route.samples
            if route.entries >= c.min_samples:
                worst_errors = max(worst_errors, route.errors / route.entries)
            route.reset()
        self.concurrency = admitted / elapsed_ms
        gradient = weighted / weights if weights else None
        if gradient is None and worst_errors > 0:
            gradient = 1.0  # errors alone (no upstream times) still count
        self.gradient = gradient if gradient is not None else 1.0
        was_stale = self.stale
        self.stale = self._quiet >= c.stale_after
        if self.stale:
            self.demand = 0.0
            if not was_stale:
                log.warning(
                    "adaptive shedding paused: no access-log entries for %.0fs", self._quiet
                )
        else:
            self.gradient_limit.update(gradient, worst_errors, self.concurrency)
            self.demand = offered / elapsed_ms
            if was_stale:
                log.info("adaptive shedding active: the access-log feed is flowing")
        self._set_bounds()
        self._publish()

    def _set_bounds(self) -> None:
        if self.stale:
            self._background_bound = self._normal_bound = math.inf
        else:
            limit = self.gradient_limit.limit
            self._background_bound = limit
            self._normal_bound = limit * self.config.normal_above
        level = self.level(0, self.config)
        if level != self._level:
            log.warning(
                "adaptive overload level %d: shedding %s (demand %.1f, limit %.1f, gradient %.2f)",
                level,
                _NAMES[level],
                self.demand,
                self.gradient_limit.limit,
                self.gradient,
            )
            self._level = level

    def _publish(self) -> None:
        self._g_limit.set(self.gradient_limit.limit)
        self._g_concurrency.set(self.concurrency)
        self._g_demand.set(self.demand)
        self._g_gradient.set(self.gradient)
        self._g_level.set(self._level)

    def stats(self) -> dict[str, float | bool]:
        return {
            "limit": round(self.gradient_limit.limit, 2),
            "concurrency": round(self.concurrency, 2),
            "demand": round(self.demand, 2),
            "gradient": round(self.gradient, 3),
            "level": self._level,
            "stale": self.stale,
        }

    # -- lifecycle ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval)
            try:
                self.tick()
            except Exception:  # a bug here must not end shaping for the process's life
                log.exception("adaptive shedding: window failed")

    async def start(self) -> None:
        self.hub.subscribe(self)
        if self._task is None or self._task.done():
            log.info(
                "adaptive shedding: limit %.0f, waiting for Envoy's access log "
                "(authz serve --access-log-grpc, authz envoy-config --access-log)",
                self.gradient_limit.limit,
            )
            self._window_start = self.clock()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="adaptive")

    async def aclose(self) -> None:
        self.hub.unsubscribe(self)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
