"""Detectors: one module each, each a class with a ``name``, built from the policy.

A detector reads :class:`~authz.detect.events.Observation` values (and the
access-log feed's :class:`~authz.detect.events.ResponseObservation`, joined to its
observation) in the background scorer, keeps its own state in bounded tables, and
returns :class:`Finding` values: what it would act on and the evidence (features,
baseline, threshold). The scorer (:mod:`authz.detect.scorer`) turns a finding into
an :class:`~authz.detect.events.Action` with the detector's response, TTL and mode,
after the warm-up and unless an action on the same target is still in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

from authz.detect.events import Observation, ResponseObservation, TargetKind
from authz.detect.features import FeatureStore, prefix_of
from authz.policy.detection_config import DetectorConfig


class Finding(NamedTuple):
    """What one detector saw about one caller."""

    detector: str
    target_kind: TargetKind
    target: str
    evidence: Mapping[str, float | str]
    #: honeypots act before the warm-up ends (nothing legitimate calls them)
    during_warmup: bool = False


Findings = list[Finding] | None


class Detector(Protocol):
    name: str

    @property
    def config(self) -> DetectorConfig:
        """The detector's part of the policy (replaced on a reload that keeps state)."""

    def observe(self, obs: Observation, store: FeatureStore) -> Findings:
        """Count ``obs``; findings if it crossed a threshold."""

    def respond(
        self, obs: Observation, response: ResponseObservation, store: FeatureStore
    ) -> Findings:
        """Count what the upstream answered to ``obs`` (the access-log feed)."""


def identity_target(obs: Observation) -> tuple[TargetKind, str] | None:
    """The caller's identity as an action target: its token, key or subject."""
    if obs.credential:
        if obs.identity_kind == "api_key":
            return "api_key", obs.credential
        if obs.identity_kind == "jwt" or not obs.subject:
            return "token", obs.credential
    if obs.subject:
        return "subject", obs.subject
    return None


def target_of(obs: Observation, target: str) -> tuple[TargetKind, str]:
    """The action target ``target`` (a policy ``target``) names for ``obs``; a kind the
    observation lacks (no token on an anonymous request) falls back to the identity,
    then to the address."""
    if target == "address":
        return "address", obs.client_address
    if target == "prefix":
        prefix = prefix_of(obs.client_address)
        return ("prefix", prefix) if prefix else ("address", obs.client_address)
    if target == "subject" and obs.subject:
        return "subject", obs.subject
    if target == "api_key" and obs.identity_kind == "api_key" and obs.credential:
        return "api_key", obs.credential
    if target == "token" and obs.credential and obs.identity_kind != "api_key":
        return "token", obs.credential
    found = identity_target(obs)
    return found if found is not None else ("address", obs.client_address)
