"""Features: what the detectors count per caller and per route, O(1) per observation.

Callers are named by :func:`identity_key` (the verified subject or SPIFFE ID, else
the client address) and by their
address and its prefix (:func:`prefix_of`: /24 for IPv4, /64 for IPv6). The
primitives here are small and allocation-free per update:

- :class:`Window`: a sliding-window counter (the current and the previous bucket of
  the window's length, the previous weighted by how much of it still overlaps);
- :class:`Ewma`: an exponentially weighted mean and variance of per-bucket counts,
  updated lazily (a bucket with no traffic folds in as a zero when the next one
  comes), the online baseline of :mod:`authz.detect.baseline`;
- :class:`Sequence`: the current run of numeric ids each the previous one +-1;
- :class:`~authz.detect.sketch.Distinct` (tumbling per window) for distinct counts.

:class:`FeatureStore` keeps the per-caller windows (the learned model's feature
vector) and the per-route population (:class:`RouteFeatures`), each in a bounded
:class:`~authz.detect.tables.LruTable`. Detectors keep their own specific state in
their own bounded tables, built from the same primitives.
"""

from __future__ import annotations

import math

from authz import reasons as R
from authz.detect.baseline import Ewma
from authz.detect.events import Observation
from authz.detect.sketch import Distinct
from authz.detect.tables import LruTable
from authz.telemetry.metrics import Metrics

#: refusals of a credential the caller presented (not absence, not our own outage)
AUTH_FAILURES = frozenset(
    r.code
    for r in R.REASONS.values()
    if r.phase == "identity" and r.code not in ("missing_credential", "jwks_unavailable")
)

__all__ = [
    "AUTH_FAILURES",
    "CallerFeatures",
    "Ewma",
    "FeatureStore",
    "RouteFeatures",
    "Sequence",
    "Window",
    "identity_key",
    "prefix_of",
]


def prefix_of(address: str) -> str:
    """The /24 of an IPv4 address, the /64 of an IPv6 one ("" if unreadable)."""
    if not address:
        return ""
    if address.startswith("::ffff:") and "." in address:  # IPv4-mapped: the IPv4 /24
        address = address[7:]
    if ":" not in address:
        head, sep, _ = address.rpartition(".")
        return f"{head}.0/24" if sep else ""
    try:
        import ipaddress

        net = ipaddress.IPv6Network(f"{address}/64", strict=False)
    except ValueError:
        return ""
    return str(net)


def identity_key(obs: Observation) -> str:
    """Who the caller is: its verified subject, else its address (an unverified
    credential names nobody: a caller could present a new one each time)."""
    if obs.subject:
        return f"{obs.identity_kind}:{obs.subject}"
    return f"addr:{obs.client_address}"


class Window:
    """A sliding-window counter: ``current`` + ``previous`` x (overlap left)."""

    __slots__ = ("current", "length", "previous", "start")

    def __init__(self, length: float, now: float) -> None:
        self.length = length
        self.start = now - (now % length)
        self.current = 0.0
        self.previous = 0.0

    def _roll(self, now: float) -> None:
        elapsed = now - self.start
        if elapsed < self.length:
            return
        if elapsed < 2 * self.length:
            self.previous = self.current
        else:
            self.previous = 0.0
        self.current = 0.0
        self.start = now - (now % self.length)

    def add(self, now: float, amount: float = 1.0) -> float:
        """Count ``amount``; the window's value after it."""
        if now - self.start >= self.length:
            self._roll(now)
        current = self.current = self.current + amount
        left = 1.0 - (now - self.start) / self.length
        return current + self.previous * left if left > 0.0 else current

    def count(self, now: float, amount: float = 1.0) -> None:
        """Count ``amount`` (:meth:`add` without computing the value)."""
        if now - self.start >= self.length:
            self._roll(now)
        self.current += amount

    def value(self, now: float) -> float:
        self._roll(now)
        left = 1.0 - (now - self.start) / self.length
        return self.current + self.previous * max(0.0, left)


class Sequence:
    """The run of consecutive numeric ids walked in one direction (each the previous
    one +1, or each -1): alternating between two neighbours is not a walk."""

    __slots__ = ("last", "run", "step")

    def __init__(self) -> None:
        self.last: int | None = None
        self.run = 0
        self.step = 0

    def add(self, value: str) -> int:
        if not value.isdigit() or len(value) > 18:
            return self.run
        n = int(value)
        last = self.last
        if last is None or n == last:
            self.last = n
            return self.run
        step = n - last
        if step == self.step:
            self.run += 1
        elif step in (1, -1):
            self.run, self.step = 1, step
        else:
            self.run, self.step = 0, 0
        self.last = n
        return self.run


class CallerFeatures:
    """One caller's window of everything (the learned model's feature vector)."""

    __slots__ = (
        "addresses",
        "bytes",
        "denies",
        "endpoints",
        "failures",
        "ids",
        "last_address",
        "last_endpoint",
        "requests",
        "started",
        "window",
    )

    def __init__(self, window: float, now: float) -> None:
        self.window = window
        self.started = now - (now % window)
        self.requests = 0
        self.denies = 0
        self.failures = 0
        self.bytes = 0
        self.endpoints = Distinct()
        self.ids = Distinct()
        self.addresses = Distinct()
        # the last endpoint and address counted (the same again changes no count)
        self.last_endpoint = self.last_address = ""

    def add(self, obs: Observation) -> None:
        self.requests += 1
        if not obs.allowed:
            self.denies += 1
        if obs.reason in AUTH_FAILURES:
            self.failures += 1
        endpoint = obs.route or obs.shape
        if endpoint != self.last_endpoint or not endpoint:
            self.endpoints.add(endpoint)
            self.last_endpoint = endpoint
        address = obs.client_address
        if address != self.last_address or not address:
            self.addresses.add(address)
            self.last_address = address
        self.bytes += obs.body_bytes
        ids = obs.object_ids
        if ids:
            add = self.ids.add
            for value in ids:
                add(value)

    def evidence(self) -> dict[str, float | str]:
        """The current window, for an action's evidence."""
        return {f"caller.{k}": v for k, v in zip(VECTOR, self.vector(), strict=True)}

    def roll(self, now: float) -> tuple[float, ...] | None:
        """The finished window's vector when ``now`` is past it (and start a new one)."""
        if now - self.started < self.window:
            return None
        vector = self.vector()
        self.started = now - (now % self.window)
        self.requests = self.denies = self.failures = self.bytes = 0
        self.endpoints.clear()
        self.ids.clear()
        self.addresses.clear()
        self.last_endpoint = self.last_address = ""
        return vector

    def vector(self) -> tuple[float, ...]:
        requests = self.requests
        return (
            float(requests),
            float(len(self.endpoints)),
            float(len(self.ids)),
            float(self.failures),
            self.denies / requests if requests else 0.0,
            float(self.bytes),
            float(len(self.addresses)),
        )


#: names of :meth:`CallerFeatures.vector`'s entries, in order
VECTOR = (
    "requests",
    "endpoints",
    "object_ids",
    "auth_failures",
    "deny_ratio",
    "bytes",
    "addresses",
)


class RouteFeatures:
    """One route's population: requests and distinct callers per window, and the
    EWMA of requests per caller (the population baseline)."""

    __slots__ = ("baseline", "bytes", "callers", "previous_callers", "requests", "started")

    def __init__(self, window: float, now: float, alpha: float) -> None:
        self.requests = Window(window, now)
        self.bytes = Window(window, now)
        self.callers = Distinct()
        self.previous_callers = 0
        self.started = self.requests.start
        self.baseline = Ewma(alpha)

    def add(self, now: float, caller: str, amount: float = 1.0) -> None:
        requests = self.requests
        if now - self.started >= requests.length:
            self._roll(now)
        if now - requests.start >= requests.length:  # (Window.count, inlined)
            requests._roll(now)
        requests.current += amount
        self.callers.add(caller)

    def _roll(self, now: float) -> None:
        length = self.requests.length
        if now - self.started >= length:
            self.baseline.add(self.per_caller(now))
            self.previous_callers = len(self.callers)
            self.callers.clear()
            self.started = now - (now % length)

    def active(self, now: float) -> int:
        self._roll(now)
        return max(len(self.callers), self.previous_callers, 1)

    def per_caller(self, now: float, exclude: float = 0.0) -> float:
        """Requests per active caller over the window (``exclude``: a caller's own)."""
        n = max(len(self.callers), self.previous_callers, 1)
        total = self.requests.value(now) - exclude
        return max(0.0, total) / max(1, n - (1 if exclude else 0))

    def bytes_per_caller(self, now: float, exclude: float = 0.0) -> float:
        n = max(len(self.callers), self.previous_callers, 1)
        total = self.bytes.value(now) - exclude
        return max(0.0, total) / max(1, n - (1 if exclude else 0))


class FeatureStore:
    """Per-caller windows and per-route populations, both bounded."""

    def __init__(
        self,
        *,
        callers: int,
        routes: int,
        window: float,
        alpha: float,
        metrics: Metrics,
    ) -> None:
        self.window = window
        self.alpha = alpha
        self.callers: LruTable[CallerFeatures] = LruTable("callers", callers, metrics)
        self.routes: LruTable[RouteFeatures] = LruTable("routes", routes, metrics)
        #: the caller window the last observation closed (see :meth:`observe`)
        self.finished: tuple[float, ...] | None = None
        #: the observation being scored, its caller's key and its route's key (set by
        #: the scorer before the detectors run: they need not work them out again)
        self.current: tuple[Observation, str, str] | None = None
        # the route last asked for (the most recent entry of ``routes``, so asking for
        # it again needs no lookup: the scorer and the detectors ask per observation)
        self._route_name: str | None = None
        self._route: RouteFeatures | None = None

    def route(self, name: str, now: float) -> RouteFeatures:
        route = self._route
        if name == self._route_name and route is not None:
            return route  # already the most recent entry: nothing else touches the table
        routes = self.routes
        route = routes.peek(name)
        if route is not None:
            routes.bump(name)
        else:
            route = routes.add(name, RouteFeatures(self.window, now, self.alpha))
        self._route_name, self._route = name, route
        return route

    def caller(self, key: str, now: float) -> CallerFeatures:
        callers = self.callers
        found = callers.touch(key)
        return found if found is not None else callers.add(key, CallerFeatures(self.window, now))

    def observe(self, obs: Observation, key: str) -> None:
        """Count ``obs`` in its caller's window; :attr:`finished` is the vector of the
        window it closed (None if it closed none)."""
        now = obs.time
        callers = self.callers
        caller = callers.peek(key)
        if caller is not None:
            callers.bump(key)
            if now - caller.started >= caller.window:
                self.finished = caller.roll(now)
            else:
                self.finished = None
        else:
            caller = callers.add(key, CallerFeatures(self.window, now))
            self.finished = None
        caller.add(obs)


def log_scale(value: float, cap: float) -> float:
    """``value`` in [0, 1] on a log scale up to ``cap`` (the learned model's input)."""
    if value <= 0:
        return 0.0
    return min(1.0, math.log1p(value) / math.log1p(cap))
