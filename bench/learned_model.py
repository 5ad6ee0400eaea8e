"""A learned multivariate model: river's Half-Space Trees over each caller's window.

Tried beside the statistical detectors and NOT an option of the policy: on the
seeded scenario of ``bench/detect_compare.py`` it caught nothing they miss (it never
sees a stuffer rotating over addresses: each address has too short a window), caught
the others later, and actioned the legitimate heavy user and some normal callers.
Kept here, for that comparison only (``pip install 'authz[detect]'`` installs
``river``); :func:`install` adds it to a scorer as one more detector.

Each caller's feature window (:class:`~authz.detect.features.CallerFeatures`:
requests, distinct endpoints, distinct object ids, auth failures, deny ratio,
bytes, distinct addresses) is scored when it closes, in the background, then
learned from. Features are log-scaled into [0, 1] (Half-Space
Trees assume bounded inputs). No action before ``min_samples`` windows were
learned. See ``bench/detect_compare.py`` for how it compares with the statistical
detectors on the seeded scenario.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authz.detect.detectors import Finding, Findings, target_of
from authz.detect.events import Observation, ResponseObservation
from authz.detect.features import VECTOR, FeatureStore, log_scale
from authz.detect.scorer import Scorer
from authz.policy.detection_config import DetectorConfig
from authz.telemetry.metrics import Metrics


@dataclass(frozen=True, slots=True)
class LearnedConfig(DetectorConfig):
    name: str = "learned"
    response: str = "log"
    target: str = "identity"
    ttl: float = 600.0
    #: anomaly score (0..1) at or above which the caller is actioned: just above the
    #: highest score of a normal caller's window on the scenario (seed 7), chosen with
    #: hindsight, which favours the model
    threshold: float = 0.82
    #: caller windows the model learns from before it scores any
    min_samples: int = 500
    seed: int = 42


#: the value each feature saturates at (log scale), in VECTOR's order
CAPS = (10_000.0, 1_000.0, 10_000.0, 1_000.0, 1.0, 1e9, 1_000.0)


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

    def observe(self, obs: Observation, store: FeatureStore) -> Findings:
        finished = store.finished  # the caller window this observation closed
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


def install(scorer: Scorer, config: LearnedConfig) -> Learned:
    """Add the model to a configured scorer as one more detector."""
    learned = Learned(config, scorer.metrics)
    scorer.detectors = (*scorer.detectors, learned)
    scorer._by_name["learned"] = config
    return learned
