"""The ``detect`` stage (phase ``observe``): one Observation per decision, queued.

It sees every decision, allowed or denied, declared or not, and does the least it
can on the request path: read what the engine already computed (record time,
decision, identity, route) into one :class:`~authz.detect.events.Observation`
(a named tuple made with ``tuple.__new__``), and append it to the scorer's bounded
queue (:meth:`authz.detect.scorer.Scorer.offer`: full -> dropped and counted). No
I/O, no regex, no path parsing (object ids and path shapes are derived in the
background). A credential is named without hashing when it can be: a JWT's
``jti``, an API key's id; otherwise its digest (:func:`credential_digest` of a
JWT's header.payload, at most :data:`MAX_CREDENTIAL` characters) is computed once
per verified identity (the JWT provider hands out one Identity per cached token)
or, for a refused credential, only when one was presented.

Building the stage configures the process's scorer (in Shared, registered as a
runtime: the service starts it) and subscribes it once to the access-log feed's
:class:`~authz.detect.events.ResponseHub`.
"""

from __future__ import annotations

import time
from typing import Any

from authz.detect.events import (
    ACTION_SINK,
    RESPONSE_HUB,
    Observation,
    ResponseHub,
    credential_digest,
)
from authz.detect.features import AUTH_FAILURES
from authz.detect.scorer import SHARED_NAME, LogOnlySink, Scorer
from authz.model import Identity
from authz.policy.config import ApiKeyProviderConfig, JwtProviderConfig, RouteConfig
from authz.stages import Context, Load, Phase, Shared

#: the longest credential text hashed on the request path
MAX_CREDENTIAL = 4096
#: verified identities whose credential name is kept (then the cache starts over)
CACHE_SIZE = 4096

_new = tuple.__new__
#: decisions before identity: a credential presented there is named too (honeypots)
_UNDECLARED = frozenset({"undeclared_route", "method_not_allowed"})


def shared_scorer(shared: Shared) -> Scorer:
    """The process's scorer (made and registered on first use; not started)."""
    return shared.runtime(SHARED_NAME, lambda: Scorer(shared.metrics, sink=_sink_of(shared)))


def _sink_of(shared: Shared) -> Any:
    # looked up when acting: the enforcer registers itself while a policy is built
    return lambda: shared.get(ACTION_SINK, LogOnlySink)


def _token_part(value: str) -> str:
    """A bearer token's header.payload (what names it: the signature may vary)."""
    scheme, _, token = value.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else value.strip()
    head, dot, rest = token[:MAX_CREDENTIAL].partition(".")
    return f"{head}.{rest.partition('.')[0]}" if dot else token


class Detect:
    """The stage itself (see the module docstring)."""

    name = "detect"
    phase: Phase = "observe"

    def __init__(self, scorer: Scorer, load: Load) -> None:
        self.scorer = scorer
        self._queue = scorer.queue
        self._dropped = scorer.dropped.inc
        self._clock = time.time
        providers = load.config.providers
        #: jwt provider name -> its header; the request headers a credential is in
        self._jwt_header = {
            p.name: p.header.lower() for p in providers if isinstance(p, JwtProviderConfig)
        }
        self._presented = tuple(
            (p.header.lower(), isinstance(p, JwtProviderConfig))
            for p in providers
            if isinstance(p, JwtProviderConfig | ApiKeyProviderConfig)
        )
        self._names: dict[int, tuple[Identity, str]] = {}

    def element(self, ctx: Context) -> str:
        return "detection"

    async def check(self, ctx: Context) -> None:
        self.step(ctx)

    def step(self, ctx: Context) -> None:
        queue = self._queue
        if len(queue) >= self.scorer.bound:
            self._dropped()
            return None
        decision = ctx.decision
        request = ctx.request
        identity = ctx.identity
        route = ctx.route
        kind = identity.kind
        reason = decision.reason if decision is not None else ""
        if kind == "anonymous":
            subject = ""
            presented = reason in AUTH_FAILURES or reason in _UNDECLARED
            credential = self._refused(request.headers) if presented else ""
        else:
            subject = identity.subject
            credential = self._name(identity, request.headers)
        body = request.body
        size = len(body) if body else 0
        if not size:
            length = request.headers.get("content-length")
            if length and length.isdigit():
                size = int(length)
        record = ctx.record
        queue.append(
            _new(
                Observation,
                (
                    record[0] if record is not None else self._clock(),
                    decision.decision_id if decision is not None else "",
                    route.name if route is not None else "",
                    request.method,
                    route.path if route is not None else "",
                    ctx.path,
                    request.source_address,
                    kind,
                    subject,
                    credential,
                    (),
                    decision.allowed if decision is not None else False,
                    decision.status if decision is not None else 0,
                    reason,
                    size,
                ),
            )
        )
        return None

    def _name(self, identity: Identity, headers: Any) -> str:
        """A verified identity's credential name: jti, key id, else a digest (cached)."""
        kind = identity.kind
        if kind == "api_key":
            key_id = identity.claims.get("key_id")
            return key_id if isinstance(key_id, str) else ""
        if kind != "jwt":
            return ""
        jti = identity.claims.get("jti")
        if isinstance(jti, str) and jti:
            return jti
        names = self._names
        found = names.get(id(identity))
        if found is not None and found[0] is identity:
            return found[1]
        header = self._jwt_header.get(identity.provider, "authorization")
        value = headers.get(header)
        name = credential_digest(_token_part(value)) if value else ""
        if len(names) >= CACHE_SIZE:
            names.clear()
        names[id(identity)] = (identity, name)
        return name

    def _refused(self, headers: Any) -> str:
        """The digest of the credential a refused request presented ("" if none)."""
        for header, is_jwt in self._presented:
            value = headers.get(header)
            if value:
                text = _token_part(value) if is_jwt else value.strip()[:MAX_CREDENTIAL]
                return credential_digest(text)
        return ""


class DetectStage:
    """Builds :class:`Detect` when the policy has a ``detection:`` section."""

    name = "detect"
    phase: Phase = "observe"

    def build(self, load: Load, route: RouteConfig | None) -> Detect | None:
        config = load.config.detection
        if route is not None:
            return None
        if config is None:
            # a reload that drops the section: the scorer (if any) stops scoring
            existing = load.shared.get(SHARED_NAME, lambda: None)
            if isinstance(existing, Scorer):
                existing.disable()
                load.shared.get(RESPONSE_HUB, ResponseHub).unsubscribe(existing)
            return None
        scorer = shared_scorer(load.shared)
        scorer.configure(config, load.config.routes)
        load.shared.get(RESPONSE_HUB, ResponseHub).subscribe(scorer)
        return Detect(scorer, load)
