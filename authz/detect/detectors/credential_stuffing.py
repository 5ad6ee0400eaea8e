"""Credential stuffing and brute force.

Per client address and per prefix (/24, /64), in a sliding window: failed
authentications (a credential was presented and refused: any ``identity``-phase
reason but ``missing_credential`` and ``jwks_unavailable``), and the distinct
identities presented from the address (subjects verified, digests of the tokens or
keys tried). A stuffer rotating over an address range stays under the per-address
count and is caught by its prefix: that finding targets the prefix.
"""

from __future__ import annotations

from authz.detect.detectors import Finding, Findings, target_of
from authz.detect.events import Observation, ResponseObservation
from authz.detect.features import AUTH_FAILURES, FeatureStore, Window, prefix_of
from authz.detect.sketch import Distinct
from authz.detect.tables import LruTable
from authz.policy.detection_config import CredentialStuffingConfig
from authz.telemetry.metrics import Metrics

__all__ = ["AUTH_FAILURES", "CredentialStuffing"]


class _Address:
    __slots__ = ("failures", "identities", "started")

    def __init__(self, window: float, now: float) -> None:
        self.failures = Window(window, now)
        self.identities = Distinct()
        self.started = now


class CredentialStuffing:
    name = "credential_stuffing"

    def __init__(self, config: CredentialStuffingConfig, metrics: Metrics, capacity: int) -> None:
        self.config = config
        self.addresses: LruTable[_Address] = LruTable(
            "credential_stuffing.addresses", capacity, metrics
        )
        self.prefixes: LruTable[Window] = LruTable(
            "credential_stuffing.prefixes", max(1, capacity // 4), metrics
        )

    def observe(self, obs: Observation, store: FeatureStore) -> Findings:
        config = self.config
        now = obs.time
        address = obs.client_address
        failed = obs.reason in AUTH_FAILURES
        presented = obs.subject or obs.credential
        if not failed and not presented:
            return None
        window = config.window
        state = self.addresses.get(address, lambda: _Address(window, now))
        if now - state.started >= window:  # a tumbling window for the distinct count
            state.identities.clear()
            state.started = now
        findings: Findings = None
        identities = len(state.identities)
        if presented and state.identities.add(presented):
            identities += 1
            if identities >= config.distinct_identities:
                findings = [self._finding(obs, "distinct_identities", identities)]
        if not failed:
            return findings
        failures = state.failures.add(now)
        if failures >= config.failures:
            return [*(findings or ()), self._finding(obs, "failures", failures)]
        prefix = prefix_of(address)
        if prefix:
            counter = self.prefixes.get(prefix, lambda: Window(window, now))
            in_prefix = counter.add(now)
            if in_prefix >= config.prefix_failures:
                evidence: dict[str, float | str] = {
                    "feature": "prefix_failures",
                    "prefix_failures": in_prefix,
                    "address_failures": failures,
                    "threshold": float(config.prefix_failures),
                    "window_s": window,
                    "reason": obs.reason,
                }
                return [*(findings or ()), Finding(self.name, "prefix", prefix, evidence)]
        return findings

    def _finding(self, obs: Observation, feature: str, value: float) -> Finding:
        config = self.config
        threshold = config.failures if feature == "failures" else config.distinct_identities
        evidence: dict[str, float | str] = {
            "feature": feature,
            feature: float(value),
            "threshold": float(threshold),
            "window_s": config.window,
            "reason": obs.reason,
        }
        kind, target = target_of(obs, config.target)
        return Finding(self.name, kind, target, evidence)

    def respond(
        self, obs: Observation, response: ResponseObservation, store: FeatureStore
    ) -> Findings:
        return None
