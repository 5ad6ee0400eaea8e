"""Credential stuffing and brute force.

Per client address and per prefix (/24, /64), in a sliding window, refused
credentials (a credential was presented and refused: any ``identity``-phase reason
but ``missing_credential`` and ``jwks_unavailable``):

- ``failures``: refusals from one address;
- ``distinct_identities``: distinct credentials refused from one address (digests
  of the tokens or keys tried; the verified ones do not count, so an office or a
  NAT with many legitimate users behind one address is not a stuffer);
- ``prefix_failures``: refusals from one /24 (/64), when they are also at least half
  of the prefix's requests: a stuffer rotating over an address range stays under
  the per-address counts and is caught by its prefix (that finding targets the
  prefix), while an office /24 whose users' tokens now and then expire is not.
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
#: a prefix is actioned only when refusals are at least this share of its requests
PREFIX_SHARE = 0.5
#: addresses whose prefix is remembered (then the memo starts over)
PREFIX_CACHE = 4096


class _Address:
    __slots__ = ("failures", "identities", "started")

    def __init__(self, window: float, now: float) -> None:
        self.failures = Window(window, now)
        self.identities = Distinct()
        self.started = now


class _Prefix:
    __slots__ = ("failures", "requests")

    def __init__(self, window: float, now: float) -> None:
        self.requests = Window(window, now)
        self.failures = Window(window, now)


class CredentialStuffing:
    name = "credential_stuffing"

    def __init__(self, config: CredentialStuffingConfig, metrics: Metrics, capacity: int) -> None:
        self.config = config
        self.addresses: LruTable[_Address] = LruTable(
            "credential_stuffing.addresses", capacity, metrics
        )
        self.prefixes: LruTable[_Prefix] = LruTable(
            "credential_stuffing.prefixes", max(1, capacity // 4), metrics
        )
        self._prefix_of: dict[str, str] = {}

    def observe(self, obs: Observation, store: FeatureStore) -> Findings:
        config = self.config
        now = obs.time
        window = config.window
        address = obs.client_address
        failed = obs.reason in AUTH_FAILURES
        cache = self._prefix_of
        prefix = cache.get(address)
        if prefix is None:
            if len(cache) >= PREFIX_CACHE:
                cache.clear()
            prefix = cache[address] = prefix_of(address)
        counts: _Prefix | None = None
        if prefix:
            prefixes = self.prefixes
            counts = prefixes.peek(prefix)
            if counts is not None:
                prefixes.bump(prefix)
            else:
                counts = prefixes.add(prefix, _Prefix(window, now))
            counts.requests.count(now)
        if not failed:
            return None
        addresses = self.addresses
        state = addresses.peek(address)
        if state is not None:
            addresses.bump(address)
        else:
            state = addresses.add(address, _Address(window, now))
        if now - state.started >= window:  # a tumbling window for the distinct count
            state.identities.clear()
            state.started = now
        findings: list[Finding] = []
        if obs.credential and state.identities.add(obs.credential):
            identities = len(state.identities)
            if identities >= config.distinct_identities:
                findings.append(self._finding(obs, "distinct_identities", identities))
        failures = state.failures.add(now)
        if failures >= config.failures:
            findings.append(self._finding(obs, "failures", failures))
        if counts is not None and not findings:
            in_prefix = counts.failures.add(now)
            requests = counts.requests.value(now)
            if in_prefix >= config.prefix_failures and in_prefix >= PREFIX_SHARE * requests:
                evidence: dict[str, float | str] = {
                    "feature": "prefix_failures",
                    "prefix_failures": in_prefix,
                    "prefix_requests": requests,
                    "address_failures": failures,
                    "threshold": float(config.prefix_failures),
                    "window_s": window,
                    "reason": obs.reason,
                }
                findings.append(Finding(self.name, "prefix", prefix, evidence))
        elif counts is not None:
            counts.failures.count(now)
        return findings or None

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
