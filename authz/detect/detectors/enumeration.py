"""Enumeration and scraping: a caller walking object ids, or far above normal volume.

Per caller and route (the caller named by
:func:`~authz.detect.features.identity_key`), three signals, any one enough:

- ``distinct_ids``: distinct object ids (the route's path parameters) within the
  window at least ``distinct_ids`` and ``ids_factor`` times the caller's own EWMA
  of distinct ids per window (BOLA: a valid token reading every order);
- ``sequential``: a run of ``sequential`` consecutive numeric ids each the previous
  one +-1 (a walk, whatever the rate);
- ``not_found``: the upstream answered 404 (the access-log feed says so) to at
  least ``not_found`` of its allowed requests within the window, and to half of them;
- ``volume``: requests within the window at least ``min_requests``,
  ``rate_factor`` times the caller's own baseline (an EWMA per bucket, seeded from
  the route's population when the caller is new) and ``population_factor`` times
  the route's *current* requests per other caller. The last term is what keeps a
  population-wide surge from actioning anyone: it rises with the surge.
"""

from __future__ import annotations

from authz.detect.baseline import BucketedEwma, Ewma
from authz.detect.detectors import Finding, Findings, target_of
from authz.detect.events import Observation, ResponseObservation
from authz.detect.features import FeatureStore, Sequence, Window, identity_key
from authz.detect.sketch import Distinct
from authz.detect.tables import LruTable
from authz.policy.detection_config import EnumerationConfig
from authz.telemetry.metrics import Metrics


class _State:
    __slots__ = ("base", "ids", "ids_base", "ids_started", "not_found", "rate", "sequence")

    def __init__(
        self, window: float, bucket: float, alpha: float, now: float, seed: float, floor: float
    ) -> None:
        self.rate = Window(window, now)
        self.base = BucketedEwma(bucket, alpha, now, seed, floor)
        self.ids = Distinct()
        self.ids_base = Ewma(alpha)
        self.ids_started = now
        self.sequence = Sequence()
        self.not_found: Window | None = None  # made on the first 404 the feed reports


class Enumeration:
    name = "enumeration"

    def __init__(
        self,
        config: EnumerationConfig,
        metrics: Metrics,
        capacity: int,
        *,
        bucket: float,
        alpha: float,
    ) -> None:
        self.config = config
        self.bucket = bucket
        self.alpha = alpha
        self.states: LruTable[_State] = LruTable("enumeration.callers", capacity, metrics)

    def observe(self, obs: Observation, store: FeatureStore) -> Findings:
        config = self.config
        now = obs.time
        current = store.current
        if current is not None and current[0] is obs:  # the scorer worked them out
            caller, route_key = current[1], current[2]
        else:
            caller, route_key = identity_key(obs), obs.route or f"?{obs.shape}"
        route = store.route(route_key, now)
        window = config.window
        key = f"{caller}|{route_key}"
        states = self.states
        state = states.peek(key)
        if state is not None:
            states.bump(key)
        else:  # a new caller's baseline starts at the population's rate
            bucket, alpha = self.bucket, self.alpha
            floor = config.min_requests * bucket / window
            seed = route.per_caller(now) * bucket / window
            state = states.add(key, _State(window, bucket, alpha, now, seed, floor))
        requests = state.rate.add(now)
        state.base.add(now)
        finding: Finding | None = None
        ids = obs.object_ids
        if ids:
            if now - state.ids_started >= window:
                state.ids_base.add(float(len(state.ids)))
                state.ids.clear()
                state.ids_started = now - (now % window)
            add = state.ids.add
            for value in ids:
                add(value)
            run = state.sequence.add(ids[-1])
            distinct = len(state.ids)
            own_ids = state.ids_base.mean
            if distinct >= config.distinct_ids and distinct >= config.ids_factor * own_ids:
                finding = self._finding(
                    obs,
                    {
                        "feature": "distinct_ids",
                        "distinct_ids": float(distinct),
                        "baseline_ids": own_ids,
                        "threshold": float(config.distinct_ids),
                        "window_s": window,
                    },
                )
            elif run >= config.sequential:
                finding = self._finding(
                    obs,
                    {
                        "feature": "sequential",
                        "sequential_run": float(run),
                        "distinct_ids": float(distinct),
                        "threshold": float(config.sequential),
                    },
                )
        if finding is None and requests >= config.min_requests:
            own = state.base.per(window)
            population = route.per_caller(now, exclude=requests)
            if requests >= config.rate_factor * own and requests >= (
                config.population_factor * population
            ):
                finding = self._finding(
                    obs,
                    {
                        "feature": "volume",
                        "requests": requests,
                        "baseline": own,
                        "baseline_std": state.base.std_per(window),
                        "population": population,
                        "population_baseline": route.baseline.mean,
                        "threshold": max(
                            config.rate_factor * own, config.population_factor * population
                        ),
                        "window_s": window,
                    },
                )
        return [finding] if finding is not None else None

    def _finding(self, obs: Observation, evidence: dict[str, float | str]) -> Finding:
        kind, target = target_of(obs, self.config.target)
        evidence["route"] = obs.route
        return Finding(self.name, kind, target, evidence)

    def respond(
        self, obs: Observation, response: ResponseObservation, store: FeatureStore
    ) -> Findings:
        """The upstream's 404s (from the access-log feed): an enumerator collects them."""
        if response.status != 404 or not obs.allowed:
            return None
        config = self.config
        state = self.states.peek(f"{identity_key(obs)}|{obs.route or f'?{obs.shape}'}")
        if state is None:
            return None
        now = response.time
        counter = state.not_found
        if counter is None:
            counter = state.not_found = Window(config.window, now)
        missing = counter.add(now)
        requests = state.rate.value(now)
        if missing < config.not_found or missing < 0.5 * requests:
            return None
        return [
            self._finding(
                obs,
                {
                    "feature": "not_found",
                    "not_found": missing,
                    "requests": requests,
                    "threshold": float(config.not_found),
                    "window_s": config.window,
                },
            )
        ]
