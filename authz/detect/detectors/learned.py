"""A learned multivariate model: river's Half-Space Trees over each caller's window.

Optional (``detection.detectors.learned.enabled``, the ``detect`` extra installs
``river``). Each caller's feature window (:class:`~authz.detect.features.CallerFeatures`:
requests, distinct endpoints, distinct object ids, sequential steps, auth
failures, deny ratio, bytes, distinct addresses) is scored when it closes, in the
background, then learned from. Features are log-scaled into [0, 1] (Half-Space
Trees assume bounded inputs). No action before ``min_samples`` windows were
learned. See ``bench/detect_compare.py`` for how it compares with the statistical
detectors on the seeded scenario.
"""

from __future__ import annotations

from typing import Any

from authz.detect.detectors import Finding, Findings, target_of
from authz.detect.events import Observation, ResponseObservation
from authz.detect.features import VECTOR, FeatureStore, log_scale
from authz.policy.detection_config import LearnedConfig
from authz.telemetry.metrics import Metrics

#: the value each feature saturates at (log scale), in VECTOR's order
CAPS = (10_000.0, 1_000.0, 10_000.0, 10_000.0, 1_000.0, 1.0, 1e9, 1_000.0)


class Learned:
    name = "learned"

    def __init__(self, config: LearnedConfig, metrics: Metrics) -> None:
        from river.anomaly import HalfSpaceTrees  # optional dependency

        self.config = config
        self.model: Any = HalfSpaceTrees(n_trees=25, height=8, window_size=250, seed=config.seed)
        self.learned = 0
        self._scored = metrics.counter(
            "authz_detect_learned_scored_total", "caller windows scored by the learned model"
        ).labels()

    @staticmethod
    def features(vector: tuple[float, ...]) -> dict[str, float]:
        return {
            name: (value if name == "deny_ratio" else log_scale(value, cap))
            for name, value, cap in zip(VECTOR, vector, CAPS, strict=True)
        }

    def observe(self, obs: Observation, key: str, store: FeatureStore) -> Findings:
        now = obs.time
        caller = store.caller(key, now)
        finished = caller.roll(now)
        caller.requests += 1
        if not obs.allowed:
            caller.denies += 1
        from authz.detect.detectors.credential_stuffing import AUTH_FAILURES

        if obs.reason in AUTH_FAILURES:
            caller.failures += 1
        caller.endpoints.add(obs.route or obs.shape)
        caller.addresses.add(obs.client_address)
        caller.bytes += obs.body_bytes
        for value in obs.object_ids:
            caller.ids.add(value)
        if finished is None:
            return None
        return self.score(obs, finished)

    def score(self, obs: Observation, vector: tuple[float, ...]) -> Findings:
        x = self.features(vector)
        score = float(self.model.score_one(x))
        self.model.learn_one(x)
        self.learned += 1
        self._scored.inc()
        if self.learned < self.config.min_samples or score < self.config.threshold:
            return None
        kind, target = target_of(obs, self.config.target)
        evidence: dict[str, float | str] = {"feature": "anomaly_score", "score": score}
        evidence.update({f"window.{k}": v for k, v in zip(VECTOR, vector, strict=True)})
        evidence["threshold"] = self.config.threshold
        return [Finding(self.name, kind, target, evidence)]

    def respond(
        self, obs: Observation, response: ResponseObservation, store: FeatureStore
    ) -> Findings:
        return None
