"""The gradient concurrency limit: the pure arithmetic of adaptive shedding.

A limit on how many requests may be in flight at the upstream, moved once per
measurement window by how the upstream's latency and errors compare with their
normal, after Netflix concurrency-limits' ``Gradient2Limit`` (the algorithm Envoy's
adaptive concurrency filter also follows) with an AIMD-style decrease on errors.
:mod:`authz.ratelimit.adaptive` feeds it from Envoy's access log; nothing here
reads a clock or does I/O, so tests drive it window by window.

Per route, per window (:class:`RouteBaseline`):

- ``latency``: the mean upstream time of the window's entries;
- ``baseline``: a slow exponential moving average of it (span ``baseline`` seconds,
  so weight ``2 / (baseline / interval + 1)``), started at the first window; when it
  is more than twice the current latency (latency came back down after a long
  overload) it also drops by 5% per window, so it does not stay high;
- ``gradient = clamp(tolerance * baseline / latency, 0.5, 1)``: 1 while latency stays
  within ``tolerance`` times its normal, down to 0.5 (never less: one outlier window
  must not halve the limit);
- ``errors``: the share of its entries that failed at the upstream (a 5xx from it, or
  Envoy's own 5xx for an upstream failure: no healthy host, connection failure,
  overflow, timeout, reset).

The window's gradient ``G`` is the traffic-weighted mean over the routes with at least
``min_samples`` entries; its error share ``E`` is the worst of those routes'. Then
(:meth:`GradientLimit.update`), with ``L`` the limit and ``D`` the upstream
concurrency the window saw:

- no route had enough entries: ``L`` unchanged;
- ``E > error_rate``: ``L <- L * backoff`` (multiplicative decrease);
- ``G < 1``: ``L <- (1 - smoothing) * L + smoothing * (G * L + sqrt(L))`` (Gradient2: the
  sqrt(L) term is the queue allowed at equilibrium; ``smoothing`` 1 is Envoy's rule, the
  default 0.5 halves the way per window, Gradient2's 0.2 is slower);
- healthy (``G = 1``): ``L <- L + sqrt(L)`` unless ``D < L / headroom`` (the upstream was
  not busy enough for the window to prove more is safe), and never below
  ``headroom * D`` (what it just served at normal latency is safe);

then ``L`` is kept within ``[min_limit, max_limit]``.
"""

from __future__ import annotations

import math

from authz.policy.ratelimit_config import AdaptiveConfig

#: The least a window's gradient can be (Gradient2's bound on one window's effect).
MIN_GRADIENT = 0.5
#: When the baseline is more than this many times the latency, it decays faster ...
DRIFT_RATIO = 2.0
#: ... by this factor per window.
DRIFT_DECAY = 0.95


def ewma_weight(config: AdaptiveConfig) -> float:
    """The baseline's weight per window: ``2 / (N + 1)``, N windows in ``baseline``."""
    windows = max(config.baseline / config.interval, 1.0)
    return 2.0 / (windows + 1.0)


class RouteBaseline:
    """One route's normal upstream latency, and the window's gradient against it."""

    __slots__ = ("baseline",)

    def __init__(self) -> None:
        #: milliseconds; 0 until the first window with enough entries
        self.baseline = 0.0

    def gradient(self, latency_ms: float, weight: float, tolerance: float) -> float:
        """Update the baseline with this window's mean latency; return the gradient."""
        if latency_ms <= 0:
            return 1.0  # nothing measurable (all instant): no sign of queueing
        if self.baseline <= 0:
            self.baseline = latency_ms
        else:
            self.baseline += weight * (latency_ms - self.baseline)
            if self.baseline > DRIFT_RATIO * latency_ms:
                self.baseline *= DRIFT_DECAY
        return max(MIN_GRADIENT, min(1.0, tolerance * self.baseline / latency_ms))


class GradientLimit:
    """The limit ``L`` and its update rule (see the module docstring)."""

    __slots__ = ("config", "limit")

    def __init__(self, config: AdaptiveConfig) -> None:
        self.config = config
        self.limit = config.initial_limit

    def update(self, gradient: float | None, error_share: float, concurrency: float) -> float:
        """One window: ``gradient`` None when no route had enough entries; returns L."""
        c = self.config
        limit = self.limit
        if gradient is None:
            return limit
        if error_share > c.error_rate:
            limit *= c.backoff
        elif gradient < 1.0:
            limit = (1 - c.smoothing) * limit + c.smoothing * (gradient * limit + math.sqrt(limit))
        else:
            if concurrency >= limit / c.headroom:
                limit += math.sqrt(limit)
            limit = max(limit, c.headroom * concurrency)
        self.limit = min(max(limit, c.min_limit), c.max_limit)
        return self.limit
