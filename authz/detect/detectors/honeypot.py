"""Honeypots: decoy paths declared in the policy that nothing legitimate calls.

Any hit marks the caller hostile: its address (the policy's ``target``, by default)
and, with ``identity: true``, the identity it presented (token, API key or subject).
No warm-up and no baseline: there is no normal rate of calls to ``/.env``. The
patterns are compiled once (``*`` within a segment, ``**`` across segments) into one
regular expression, matched against the canonical path in the background.
"""

from __future__ import annotations

import re

from authz.detect.detectors import Finding, Findings, identity_target, target_of
from authz.detect.events import Observation, ResponseObservation
from authz.detect.features import FeatureStore
from authz.policy.detection_config import HoneypotConfig
from authz.policy.detection_loader import honeypot_pattern
from authz.telemetry.metrics import Metrics


class Honeypot:
    name = "honeypot"

    def __init__(self, config: HoneypotConfig, metrics: Metrics) -> None:
        self.config = config
        patterns = [honeypot_pattern(p).pattern for p in config.paths]
        self._match = re.compile("|".join(f"(?:{p})" for p in patterns)).match if patterns else None
        #: the literal text each pattern starts with: a path starting with none of them
        #: matches none (one ``startswith`` rather than the regex, for most requests)
        self._starts = tuple(p.partition("*")[0] for p in config.paths)

    def observe(self, obs: Observation, store: FeatureStore) -> Findings:
        match = self._match
        path = obs.path
        if match is None or not path.startswith(self._starts) or match(path) is None:
            return None
        evidence: dict[str, float | str] = {
            "path": obs.path[:256],
            "method": obs.method,
            "hits": 1.0,
            "threshold": 1.0,
        }
        kind, target = target_of(obs, self.config.target)
        findings = [Finding(self.name, kind, target, evidence, during_warmup=True)]
        if self.config.identity:
            identity = identity_target(obs)
            if identity is not None and identity != (kind, target):
                findings.append(Finding(self.name, *identity, evidence, during_warmup=True))
        return findings

    def respond(
        self, obs: Observation, response: ResponseObservation, store: FeatureStore
    ) -> Findings:
        return None
