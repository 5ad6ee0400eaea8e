"""Token sharing and replay: one token, or one subject, from many client addresses.

Per token (its ``jti`` or the digest of its header and payload; an API key's
digest) and per subject, the distinct client addresses within a tumbling window.
A token crossing ``addresses`` is actioned (by default revoked: target ``token``);
a subject crossing ``subject_addresses`` is actioned on the subject.
"""

from __future__ import annotations

from authz.detect.detectors import Finding, Findings, target_of
from authz.detect.events import Observation, ResponseObservation
from authz.detect.features import FeatureStore
from authz.detect.sketch import Distinct
from authz.detect.tables import LruTable
from authz.policy.detection_config import TokenSharingConfig
from authz.telemetry.metrics import Metrics


class _Spread:
    __slots__ = ("addresses", "last", "started")

    def __init__(self, now: float) -> None:
        self.addresses = Distinct()
        self.started = now
        #: the last address counted (the same again changes no count)
        self.last = ""


class TokenSharing:
    name = "token_sharing"

    def __init__(
        self, config: TokenSharingConfig, metrics: Metrics, tokens: int, subjects: int
    ) -> None:
        self.config = config
        self.tokens: LruTable[_Spread] = LruTable("token_sharing.tokens", tokens, metrics)
        self.subjects: LruTable[_Spread] = LruTable("token_sharing.subjects", subjects, metrics)

    def _count(self, table: LruTable[_Spread], key: str, obs: Observation) -> int:
        now = obs.time
        spread = table.peek(key)
        if spread is not None:
            table.bump(key)
        else:
            spread = table.add(key, _Spread(now))
        if now - spread.started >= self.config.window:
            spread.addresses.clear()
            spread.started = now
            spread.last = ""
        address = obs.client_address
        if address == spread.last and address:
            return 0  # the address counted last: the count did not change
        spread.last = address
        addresses = spread.addresses
        before = len(addresses)
        if not addresses.add(address):
            return 0  # an address seen already: the count did not change
        return before + 1

    def observe(self, obs: Observation, store: FeatureStore) -> Findings:
        if not obs.allowed and not obs.subject:
            return None  # a refused, unverified credential is stuffing, not sharing
        config = self.config
        findings: Findings = None
        if obs.credential:
            count = self._count(self.tokens, obs.credential, obs)
            if count >= config.addresses:
                kind, target = target_of(obs, config.target)
                findings = [Finding(self.name, kind, target, self._evidence("token", count))]
        if obs.subject and config.subject_addresses:
            count = self._count(self.subjects, f"{obs.identity_kind}:{obs.subject}", obs)
            if count >= config.subject_addresses:
                evidence = self._evidence("subject", count, config.subject_addresses)
                found = Finding(self.name, "subject", obs.subject, evidence)
                findings = [*(findings or ()), found]
        return findings

    def _evidence(self, of: str, count: int, threshold: int = 0) -> dict[str, float | str]:
        return {
            "feature": f"{of}_addresses",
            f"{of}_addresses": float(count),
            "threshold": float(threshold or self.config.addresses),
            "window_s": self.config.window,
        }

    def respond(
        self, obs: Observation, response: ResponseObservation, store: FeatureStore
    ) -> Findings:
        return None
