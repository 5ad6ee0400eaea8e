"""What detection sees and what it does: the types its parts share.

- :class:`Observation`: one request as the detectors see it, built on the request
  path (O(1), no I/O) from the stage context and queued for the background scorer.
- :class:`ResponseObservation`: what Envoy's access-log feed says about the same
  request afterwards (the upstream's status and size, which ext_authz never sees),
  joined to its decision by ``decision_id``.
- :class:`Action`: what a detector decided to do about a caller, with the evidence
  (features, baseline, threshold) that explains it; an :class:`ActionSink` applies
  it (blocks, revocations, throttles, step-up), or only records it in monitor mode.

No credential is ever kept here: a token or an API key appears only as a short
digest (:func:`credential_digest`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Literal, NamedTuple, Protocol

log = logging.getLogger("authz.detect")

#: What a detector may do, mildest first.
Response = Literal["log", "throttle", "step_up", "block", "revoke"]
RESPONSES: tuple[Response, ...] = ("log", "throttle", "step_up", "block", "revoke")
#: What an action applies to.
TargetKind = Literal["address", "prefix", "subject", "api_key", "token"]
TARGET_KINDS: tuple[TargetKind, ...] = ("address", "prefix", "subject", "api_key", "token")


def credential_digest(credential: str | bytes) -> str:
    """A short, stable, non-reversible name for a credential (16 hex digits of SHA-256).

    For a JWT prefer its ``jti`` when it has one; hash ``header.payload`` (not the
    signature: ES256 signatures are malleable, so the same token has many)."""
    data = credential.encode() if isinstance(credential, str) else credential
    return hashlib.sha256(data).hexdigest()[:16]


def token_part(value: str) -> str:
    """What names a presented bearer token (an ``Authorization`` value or a bare token):
    its ``header.payload`` (the signature may vary), or the stripped value when it has no
    ``.``. The detectors and the enforcer both name a JWT without ``jti`` by
    ``credential_digest(token_part(value))``, so a detector's action on a token matches
    the enforcer's check of it."""
    scheme, _, token = value.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else value.strip()
    head, dot, rest = token.partition(".")
    return f"{head}.{rest.partition('.')[0]}" if dot else token


class Observation(NamedTuple):
    """One request, as the detectors see it."""

    time: float
    decision_id: str
    #: the route's name ("" when no route matched: an undeclared path)
    route: str
    method: str
    #: the route's template, or the path's shape with ids collapsed (undeclared)
    shape: str
    #: the canonical path, without the query (honeypots match on it)
    path: str
    #: the client address Envoy saw
    client_address: str
    #: jwt | mtls | api_key | anonymous (the verified identity)
    identity_kind: str
    #: the verified subject or SPIFFE ID ("" when none was verified)
    subject: str
    #: digest of the credential presented, verified or not ("" when none): the
    #: token's jti (or :func:`credential_digest` of header.payload), the API key's digest
    credential: str
    #: the values of the route's path parameters, in template order (object ids)
    object_ids: tuple[str, ...]
    #: the decision: allowed (including monitor mode), its status and reason code
    allowed: bool
    status: int
    reason: str
    #: request body size in bytes (Content-Length or the body Envoy sent)
    body_bytes: int


class ResponseObservation(NamedTuple):
    """One access-log entry from Envoy, for a request authz decided (or a public route
    it never saw: then ``decision_id`` is "" and ``route`` comes from the log)."""

    time: float
    decision_id: str
    route: str
    method: str
    path: str
    client_address: str
    #: the status the client got (the upstream's, or Envoy's own)
    status: int
    #: response body bytes sent to the client
    bytes_sent: int
    #: total duration and the upstream's share, milliseconds (-1 when unknown)
    duration_ms: float
    upstream_ms: float
    #: Envoy's response flags ("" when none; e.g. "UF" upstream connection failure)
    response_flags: str = ""
    #: whether the request reached an upstream (False: Envoy answered it itself)
    upstream: bool = True
    #: the request's X-Forwarded-For as Envoy logged it ("" when absent): behind
    #: ``rate_limits.trusted_hops`` proxies the client is read from it, as the check does
    forwarded_for: str = ""


class Action(NamedTuple):
    """What a detector decided about one caller, and why."""

    time: float
    detector: str
    response: Response
    target_kind: TargetKind
    target: str
    #: seconds the action lasts (a revocation lasts until the credential expires)
    ttl: float
    #: the reason code a request denied by this action carries
    reason: str
    #: what the detector saw: feature values, the baseline, the threshold
    evidence: Mapping[str, float | str]
    #: monitor mode: recorded, not enforced
    monitor: bool = False


#: The reason code a request denied by an action of each response carries.
REASON_OF: dict[Response, str] = {
    "log": "",
    "throttle": "caller_throttled",
    "step_up": "step_up_required",
    "block": "caller_blocked",
    "revoke": "credential_revoked",
}

#: The :class:`~authz.stages.Shared` key of the process's :class:`ActionSink`. The
#: enforcer registers itself there when a policy is built; a detector looks the sink
#: up when it acts (in the background), never while the policy is being built.
ACTION_SINK = "detect.action_sink"


class ActionSink(Protocol):
    """Applies actions (blocks, revocations, throttles, step-up). Called from the
    background scorer, never from the request path."""

    def apply(self, action: Action) -> None: ...


class ObservationListener(Protocol):
    """Gets every request's observation. Called on the request path: O(1), no I/O."""

    def on_observation(self, observation: Observation) -> None: ...


class ResponseListener(Protocol):
    """Gets Envoy's access-log entries (from the feed's thread or task): O(1)."""

    def on_response(self, observation: ResponseObservation) -> None: ...


#: The :class:`~authz.stages.Shared` key of the process's :class:`ResponseHub`.
RESPONSE_HUB = "detect.response_hub"


class ResponseHub:
    """Where the access-log feed publishes and detectors (and shaping) subscribe.

    Kept in :class:`~authz.stages.Shared` (:data:`RESPONSE_HUB`), so it survives a
    reload; a subscriber that is itself kept in Shared subscribes once. A listener's
    error is logged and never reaches the feed (losing the feed degrades detection,
    never decisions)."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: tuple[ResponseListener, ...] = ()

    def subscribe(self, listener: ResponseListener) -> None:
        if not any(existing is listener for existing in self._listeners):
            self._listeners = (*self._listeners, listener)

    def unsubscribe(self, listener: ResponseListener) -> None:
        self._listeners = tuple(x for x in self._listeners if x is not listener)

    def __len__(self) -> int:
        return len(self._listeners)

    def publish(self, observation: ResponseObservation) -> None:
        for listener in self._listeners:
            try:
                listener.on_response(observation)
            except Exception:
                log.exception("response listener %r failed", listener)
