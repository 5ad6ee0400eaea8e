"""Unusual data volume: a caller moving far more bytes than it and its peers do.

Counts, per caller and route, the response bytes the access-log feed reports
(``ResponseObservation.bytes_sent``, joined to the observation by decision id) and
the request bodies (``Observation.body_bytes``), in a sliding window. Actioned when
the window holds at least ``min_bytes``, ``factor`` times the caller's own EWMA
(per bucket, seeded from the route's population) and ``population_factor`` times
the route's current bytes per other caller.
"""

from __future__ import annotations

from authz.detect.baseline import BucketedEwma
from authz.detect.detectors import Finding, Findings, target_of
from authz.detect.events import Observation, ResponseObservation
from authz.detect.features import FeatureStore, Window, identity_key
from authz.detect.tables import LruTable
from authz.policy.detection_config import DataVolumeConfig
from authz.telemetry.metrics import Metrics


class _State:
    __slots__ = ("base", "bytes")

    def __init__(
        self, window: float, bucket: float, alpha: float, now: float, seed: float, floor: float
    ) -> None:
        self.bytes = Window(window, now)
        self.base = BucketedEwma(bucket, alpha, now, seed, floor)


class DataVolume:
    name = "data_volume"

    def __init__(
        self,
        config: DataVolumeConfig,
        metrics: Metrics,
        capacity: int,
        *,
        bucket: float,
        alpha: float,
    ) -> None:
        self.config = config
        self.bucket = bucket
        self.alpha = alpha
        self.states: LruTable[_State] = LruTable("data_volume.callers", capacity, metrics)

    def _add(self, obs: Observation, amount: float, store: FeatureStore) -> Findings:
        config = self.config
        now = obs.time
        route_key = obs.route or f"?{obs.shape}"
        route = store.route(route_key, now)
        route.bytes.count(now, amount)
        window = config.window
        key = f"{identity_key(obs)}|{route_key}"
        bucket, alpha = self.bucket, self.alpha
        floor = config.min_bytes * bucket / window
        states = self.states
        state = states.peek(key)
        if state is not None:
            states.bump(key)
        else:
            seed = route.bytes_per_caller(now) * bucket / window
            state = states.add(key, _State(window, bucket, alpha, now, seed, floor))
        total = state.bytes.add(now, amount)
        state.base.add(now, amount)
        if total < config.min_bytes:
            return None
        own = state.base.per(window)
        population = route.bytes_per_caller(now, exclude=total)
        if total < config.factor * own or total < config.population_factor * population:
            return None
        kind, target = target_of(obs, config.target)
        evidence: dict[str, float | str] = {
            "feature": "bytes",
            "bytes": total,
            "baseline": own,
            "population": population,
            "threshold": max(float(config.min_bytes), config.factor * own),
            "window_s": window,
            "route": obs.route,
        }
        return [Finding(self.name, kind, target, evidence)]

    def observe(self, obs: Observation, store: FeatureStore) -> Findings:
        if obs.body_bytes <= 0:
            return None
        return self._add(obs, float(obs.body_bytes), store)

    def respond(
        self, obs: Observation, response: ResponseObservation, store: FeatureStore
    ) -> Findings:
        if response.bytes_sent <= 0:
            return None
        return self._add(obs, float(response.bytes_sent), store)
