"""The policy compiled at load: what :class:`~authz.engine.PolicyEngine` runs.

A :class:`CompiledPolicy` holds everything prepared once per policy: the router,
the identity providers (its runtimes), one :class:`RoutePlan` per route (providers
in the order they are asked, the route's stages and their bound steps, monitor
mode, credential headers to strip), the policy-wide stages (``head`` before a
route is known, ``observers`` after the decision) and the identity header names.
Nothing here runs a request; the engine only reads it, so swapping one in is one
assignment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from authz import pipeline
from authz.authorize import Authorizer
from authz.identity.base import Answer, Clock, Fetcher, IdentityProvider, answer_now
from authz.identity.registry import build_provider
from authz.model import Identity, Request
from authz.policy.config import (
    ApiKeyProviderConfig,
    IntrospectionProviderConfig,
    JwtProviderConfig,
    PolicyConfig,
    RouteConfig,
)
from authz.routing import Router
from authz.runtime import Runtimes, Together
from authz.stages import Load, Shared, Stage, StageFactory, step_of
from authz.stages import Step as StageStep

#: Identities whose header block is kept per policy (see PolicyEngine._identity_headers).
IDENTITY_HEADER_CACHE_SIZE = 4096

Headers = tuple[tuple[str, str], ...]


def identity_header_parts(
    policy: CompiledPolicy, identity: Identity
) -> tuple[Headers, Headers, tuple[str, ...]]:
    """(headers before the decision id, headers after it, headers to remove)."""
    names = policy.config.headers
    if identity.kind == "anonymous":
        return (), (), tuple(h for h in policy.identity_headers if h != names.decision_id)
    before = (
        (names.subject, _header_value(identity.subject)),
        (names.identity_type, identity.kind),
        (names.provider, identity.provider),
    )
    after = []
    remove = [names.ratelimit]  # set by the rate-limit stage when a limit applies
    if identity.issuer:
        after.append((names.issuer, _header_value(identity.issuer)))
    else:
        remove.append(names.issuer)
    if identity.scopes:
        after.append((names.scopes, _header_value(" ".join(sorted(identity.scopes)))))
    else:
        remove.append(names.scopes)
    return before, tuple(after), tuple(remove)


def _header_value(value: str) -> str:
    """A value safe to put in an HTTP header (control characters percent-encoded)."""
    if value.isascii() and value.isprintable():
        return value
    return "".join(
        c if (c.isascii() and c.isprintable()) else "".join(f"%{b:02X}" for b in c.encode())
        for c in value
    )


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What the engine needs for one route, prepared at load."""

    route: RouteConfig
    providers: tuple[IdentityProvider, ...]  # in the order they are asked
    authorizer: Authorizer
    monitor: bool
    strip: tuple[str, ...]  # credential headers to remove upstream
    #: The route's stages (phases pre, identity, authorize, post), in run order.
    stages: tuple[Stage, ...] = ()
    #: Their steps (:func:`authz.stages.step_of`, bound at load): what the hot path calls.
    steps: tuple[StageStep, ...] = ()
    #: Providers whose credentials must not be sent together (see credential_plan);
    #: empty unless the route is exclusive with two or more request credentials.
    exclusive: tuple[IdentityProvider, ...] = ()
    #: (provider, its bound ``authenticate_now``) in ``providers`` order, made from
    #: ``providers`` (so a replaced plan gets its own): what the identity stage asks.
    answers: tuple[tuple[IdentityProvider, Callable[[Request], Answer]], ...] = field(init=False)

    def __post_init__(self) -> None:
        answers = tuple((p, answer_now(p)) for p in self.providers)
        object.__setattr__(self, "answers", answers)


def credential_plan(
    route: RouteConfig, providers: tuple[IdentityProvider, ...]
) -> tuple[tuple[IdentityProvider, ...], tuple[IdentityProvider, ...]]:
    """(the order providers are asked in, the providers checked for two credentials).

    ``first_match``: route order, nothing checked; the first provider whose
    credential is present decides. ``exclusive``: a credential in the request
    (header, query) decides, so it is never left unverified beside another; the
    connection's own identity (mTLS) is asked after those, and only matters when
    the request carries no credential. Only routes with two or more request
    credential providers pay for the check.
    """
    if route.credentials == "first_match":
        return providers, ()
    in_request = tuple(p for p in providers if not p.connection_credential)
    connection = tuple(p for p in providers if p.connection_credential)
    return in_request + connection, in_request if len(in_request) > 1 else ()


class CompiledPolicy:
    """A loaded policy with its providers and stages; ``start`` makes it ready to serve.

    Building starts nothing: the providers are registered in :attr:`runtimes` (started
    by :meth:`start`, closed by :meth:`close`); process-wide state a stage needs is
    registered in ``shared.runtimes``, which the service starts once the build succeeded.
    ``stages`` replaces the registry (:data:`authz.pipeline.STAGES`); the core stages
    (canonical path, route, identity, authorize) are added if it lacks them.
    """

    def __init__(
        self,
        config: PolicyConfig,
        *,
        clock: Clock = time.time,
        fetcher: Fetcher | None = None,
        shared: Shared | None = None,
        stages: Sequence[StageFactory] | None = None,
    ) -> None:
        self.config = config
        self.shared = shared if shared is not None else Shared()
        factories = pipeline.ordered(stages)
        self.version = config.version
        self.router = Router(config.routes)
        self.providers: dict[str, IdentityProvider] = {
            p.name: build_provider(
                p,
                clock=clock,
                fetcher=fetcher,
                metrics=self.shared.metrics,
                stores={st.name: st for st in config.rate_limits.stores},
            )
            for p in config.providers
        }
        #: the policy's own runtimes: its identity providers (JWKS caches), started together
        self.runtimes = Runtimes()
        self.runtimes.add(Together(self.providers.values(), name="identity providers"))
        header_of = {
            p.name: p.header
            for p in config.providers
            if isinstance(p, JwtProviderConfig | ApiKeyProviderConfig | IntrospectionProviderConfig)
        }
        global_monitor = config.mode == "monitor"
        self.plans: dict[str, RoutePlan] = {}
        load = Load(config, self.shared, self.providers, self.router, self.plans)
        bind = self.shared.step_probe or step_of  # timed when telemetry counts
        for route in config.routes:
            strip: tuple[str, ...] = ()
            if route.strip_credential:
                strip = tuple(sorted({header_of[n] for n in route.providers if n in header_of}))
            order, exclusive = credential_plan(
                route, tuple(self.providers[n] for n in route.providers)
            )
            route_stages = pipeline.build(factories, pipeline.ROUTE_PHASES, load, route)
            self.plans[route.name] = RoutePlan(
                route=route,
                providers=order,
                exclusive=exclusive,
                authorizer=Authorizer(route),
                monitor=global_monitor if route.mode is None else route.mode == "monitor",
                strip=strip,
                stages=route_stages,
                steps=tuple(bind(stage) for stage in route_stages),
            )
        #: canonical path, request-phase gates, route: before a route is known
        self.head = pipeline.build(factories, pipeline.POLICY_PHASES, load, None)
        self.head_steps = tuple(bind(stage) for stage in self.head)
        self.observers = pipeline.build(factories, ("observe",), load, None)
        self.observer_steps = tuple(step_of(stage) for stage in self.observers)
        #: every factory's (name, phase), in run order: explain lists the ones that
        #: have nothing to do on a route as "abstain"
        self.registered = tuple((f.name, f.phase) for f in factories)
        self.global_monitor = global_monitor
        self.undeclared_monitor = global_monitor or config.undeclared_routes == "monitor"
        names = config.headers
        self.identity_headers = names.all()
        self.decision_id_header = names.decision_id
        #: id(identity) -> (identity, headers before/after the decision id, to remove)
        self.identity_headers_cache: dict[
            int, tuple[Identity, Headers, Headers, tuple[str, ...]]
        ] = {}
        self.realm = config.realm.replace('"', "")
        self.log_fails_closed = config.decision_log.on_failure == "deny"
        #: the audit trail's door for this policy (None: no ``audit:`` section)
        self.audit: Any = None
        if config.audit is not None:
            from authz.audit.entry import audit_view
            from authz.audit.writer import AuditGate, AuditWriter

            section = config.audit
            writer = self.shared.runtime("audit", lambda: AuditWriter(section, self.shared.metrics))
            self.audit = AuditGate(writer, audit_view(config), section)

    async def start(self) -> None:
        await self.runtimes.start()

    def ready(self) -> bool:
        return all(p.ready() for p in self.providers.values())

    async def close(self) -> None:
        await self.runtimes.aclose()
