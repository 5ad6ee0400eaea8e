"""The ``detect`` stage (phase ``observe``): one Observation per decision, queued.

It sees every decision, allowed or denied, declared or not, and does the least it
can on the request path: one 5-tuple (the fields detectors read of the decision
record the engine already made, taken in one call: :func:`~authz.detect.intake.pick`;
the route's template, the credential's name, the body size, the epoch of the
policy section the stage was built with: strings and numbers only, so the garbage
collector soon stops tracking it) appended to the scorer's
bounded queue (full: dropped and counted); the scorer turns it into the decision's
:class:`~authz.detect.events.Observation` in the background
(:func:`authz.detect.intake.observation_of`). No I/O, no regex, no path parsing
(object ids and path shapes are derived in the background). The request itself
is never kept (its headers hold the credential, its body may be large). A
credential is named without hashing when it can be: a JWT's ``jti``, an API key's
id; a JWT without ``jti`` is
named by the digest of its header.payload (:func:`credential_digest` of
:func:`token_part`, as the enforcer names it), computed once per verified identity
(the JWT provider hands out one Identity per cached token); a refused credential's
digest is computed only when one was presented (of at most :data:`MAX_CREDENTIAL`
characters).

Building the stage proposes the policy's section to the process's scorer (in
Shared, registered as a runtime: the service starts it), which applies it once
that policy serves (:meth:`~authz.detect.scorer.Scorer.propose`), and subscribes
the scorer once to the access-log feed's :class:`~authz.detect.events.ResponseHub`.
"""

from __future__ import annotations

import logging
from typing import Any

from authz.detect.events import (
    ACTION_SINK,
    RESPONSE_HUB,
    ResponseHub,
    credential_digest,
    token_part,
)
from authz.detect.features import AUTH_FAILURES
from authz.detect.intake import ADDRESS, LogOnlySink, pick
from authz.detect.scorer import SHARED_NAME, Scorer
from authz.model import Identity
from authz.policy.config import ApiKeyProviderConfig, JwtProviderConfig, RouteConfig
from authz.ratelimit.keys import client_address
from authz.record import DecisionRecord
from authz.stages import Context, Load, Phase, Shared

log = logging.getLogger("authz.detect")

#: the longest credential text hashed on the request path
MAX_CREDENTIAL = 4096
#: verified identities whose credential name is kept (then the cache starts over)
CACHE_SIZE = 4096

_new = tuple.__new__
#: decisions before identity: a credential presented there is named too (honeypots)
_UNDECLARED = frozenset({"undeclared_route", "method_not_allowed"})
_REASON = DecisionRecord._fields.index("reason")


def shared_scorer(shared: Shared, where: str = "inline") -> Scorer:
    """The process's scorer (made and registered on first use; not started): a
    :class:`~authz.detect.remote.ProcessScorer` when ``where`` is ``process``. Where
    it scores is fixed for the process's life: a reload that changes
    ``detection.scorer`` is logged and takes effect at the next start."""

    def make() -> Scorer:
        if where == "process":
            from authz.detect.remote import ProcessScorer

            return ProcessScorer(shared.metrics, sink=_sink_of(shared))
        return Scorer(shared.metrics, sink=_sink_of(shared))

    scorer = shared.runtime(SHARED_NAME, make)
    remote = type(scorer).__name__ == "ProcessScorer"
    if remote != (where == "process"):
        log.warning(
            "detection.scorer: %s takes effect at the next start (scoring stays %s)",
            where,
            "in a child process" if remote else "inline",
        )
    return scorer


def _sink_of(shared: Shared) -> Any:
    # looked up when acting: the enforcer registers itself while a policy is built
    return lambda: shared.get(ACTION_SINK, LogOnlySink)


class Detect:
    """The stage itself (see the module docstring)."""

    name = "detect"
    phase: Phase = "observe"

    def __init__(self, scorer: Scorer, load: Load, epoch: int = 0) -> None:
        self.scorer = scorer
        self._queue = scorer.queue
        config = load.config.detection
        self._bound = config.queue if config is not None else scorer.bound
        #: which policy's section the scorer applies to what this stage queues
        self._epoch = epoch
        self._dropped = scorer.dropped.inc
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
        #: the client address as rate limits and the enforcer read it (behind
        #: ``rate_limits.trusted_hops`` proxies: from X-Forwarded-For), so that an action
        #: on an address lands on the client, not on the proxy in front of it
        self._hops = load.config.rate_limits.trusted_hops

    def element(self, ctx: Context) -> str:
        return "detection"

    async def check(self, ctx: Context) -> None:
        self.step(ctx)

    def step(self, ctx: Context) -> None:
        queue = self._queue
        if len(queue) >= self._bound:
            self._dropped()
            return None
        record = ctx.record
        if record is None:  # the engine records before any observe stage
            return None
        identity = ctx.identity
        request = ctx.request
        kind = identity.kind
        if kind == "anonymous":
            reason = record[_REASON]
            presented = reason in AUTH_FAILURES or reason in _UNDECLARED
            credential = self._refused(request.headers) if presented else ""
        elif kind == "jwt":
            jti = identity.claims.get("jti")
            credential = (
                jti if type(jti) is str and jti else self._digest(identity, request.headers)
            )
        elif kind == "api_key":
            key_id = identity.claims.get("key_id")
            credential = key_id if type(key_id) is str else ""
        else:
            credential = ""
        body = request.body
        size = len(body) if body else 0
        if not size:
            length = request.headers.get("content-length")
            if length and length.isdigit():
                size = int(length)
        fields = pick(record)
        if self._hops:
            address = client_address(
                record.client_address, request.headers.get("x-forwarded-for"), self._hops
            )
            if address != record.client_address:
                fields = (*fields[:ADDRESS], address, *fields[ADDRESS + 1 :])
        route = ctx.route
        # only strings and numbers: the garbage collector stops tracking the tuple
        queue.append(
            (fields, route.path if route is not None else "", credential, size, self._epoch)
        )
        return None

    def _digest(self, identity: Identity, headers: Any) -> str:
        """A verified JWT without a jti: the digest of its header.payload (cached per
        identity: the provider hands out one Identity per cached token)."""
        names = self._names
        found = names.get(id(identity))
        if found is not None and found[0] is identity:
            return found[1]
        header = self._jwt_header.get(identity.provider, "authorization")
        value = headers.get(header)
        name = credential_digest(token_part(value)) if value else ""
        if len(names) >= CACHE_SIZE:
            names.clear()
        names[id(identity)] = (identity, name)
        return name

    def _refused(self, headers: Any) -> str:
        """The digest of the credential a refused request presented ("" if none)."""
        for header, is_jwt in self._presented:
            value = headers.get(header)
            if value:
                value = value[:MAX_CREDENTIAL]  # refused: whatever the client sent, bounded
                text = token_part(value) if is_jwt else value.strip()
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
        scorer = shared_scorer(load.shared, config.scorer)
        epoch = scorer.propose(config, load.config.routes)
        load.shared.get(RESPONSE_HUB, ResponseHub).subscribe(scorer)
        return Detect(scorer, load, epoch)
