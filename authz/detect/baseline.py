"""Online baselines: what normal looks like, learned from the traffic itself.

:class:`Ewma` is an exponentially weighted mean and variance (West 1979's
incremental form): ``alpha`` is the weight of each new sample, so the baseline
forgets with a half-life of about ``0.69 / alpha`` samples. :class:`BucketedEwma`
feeds it one sample per bucket of ``bucket`` seconds (a count per bucket), lazily:
the bucket closes when the next observation after it arrives, and empty buckets
in between fold in as zeros (at most :data:`MAX_GAP` of them; past that the mean
has decayed to nothing anyway).

Per caller the baseline is its own history; per route the population baseline
(:class:`authz.detect.features.RouteFeatures`) is the EWMA of requests per active
caller, and the detectors compare a caller with the route's *current* population
(excluding the caller): a rise most callers share raises the yardstick with it, so
a product launch or a population-wide surge actions nobody.
"""

from __future__ import annotations

import math

MAX_GAP = 64
#: a bucket folds into a baseline at most this many times its mean
RISE = 3.0


class Ewma:
    """Exponentially weighted mean and variance."""

    __slots__ = ("alpha", "mean", "samples", "var")

    def __init__(self, alpha: float, mean: float = 0.0) -> None:
        self.alpha = alpha
        self.mean = mean
        self.var = 0.0
        self.samples = 0

    def add(self, x: float) -> None:
        if not self.samples and not self.mean:
            self.mean = x
        else:
            diff = x - self.mean
            incr = self.alpha * diff
            self.mean += incr
            self.var = (1 - self.alpha) * (self.var + diff * incr)
        self.samples += 1

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.var > 0 else 0.0


class BucketedEwma:
    """A count per bucket of ``bucket`` seconds, folded into an :class:`Ewma`.

    ``seed`` is the prior (a new caller starts at its route's per-caller rate, not
    at its first bucket: an attacker's first bucket must not become its normal).
    A bucket is folded in winsorised, at most :data:`RISE` times the mean (or
    ``floor``, the detector's own minimum per bucket, if larger), so an anomaly
    cannot teach the baseline itself within a few buckets while a real, gradual
    rise is still followed."""

    __slots__ = ("bucket", "count", "ewma", "floor", "start")

    def __init__(
        self, bucket: float, alpha: float, now: float, seed: float = 0.0, floor: float = 0.0
    ) -> None:
        self.bucket = bucket
        self.start = now - (now % bucket)
        self.count = 0.0
        self.floor = floor
        self.ewma = Ewma(alpha, seed)
        self.ewma.samples = 1  # the prior counts as a sample

    def add(self, now: float, amount: float = 1.0) -> None:
        if now - self.start >= self.bucket:
            self.roll(now)
        self.count += amount

    def roll(self, now: float) -> None:
        elapsed = now - self.start
        if elapsed < self.bucket:
            return
        ewma = self.ewma
        ewma.add(min(self.count, max(RISE * ewma.mean, self.floor)))
        gap = min(int(elapsed // self.bucket) - 1, MAX_GAP)
        for _ in range(gap):
            ewma.add(0.0)
        self.count = 0.0
        self.start = now - (now % self.bucket)

    def per(self, seconds: float) -> float:
        """The baseline's mean count over ``seconds`` (buckets scaled)."""
        return self.ewma.mean * seconds / self.bucket

    def std_per(self, seconds: float) -> float:
        return self.ewma.std * seconds / self.bucket
