"""The stages every policy has: canonical path, route, identity and authorize.

Registered, with the pluggable ones, in :mod:`authz.pipeline`. Each has a ``step``
(see :mod:`authz.stages`): canonical path, route and authorize never wait, and
identity waits only when a provider must (a JWT to verify, keys to fetch), so the
engine runs a request with a cached token without a coroutine for any of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

from authz import reasons as R
from authz.authorize import Authorizer
from authz.errors import AuthzError, InvalidToken, MissingCredential, MultipleCredentials
from authz.identity.base import WAIT, IdentityProvider
from authz.model import Identity, Request
from authz.paths import canonicalize
from authz.policy.config import JwtProviderConfig, PolicyConfig, RouteConfig
from authz.routing import Router
from authz.stages import Context, Load, Phase


class CanonicalPath:
    """Sets ``ctx.path`` and ``ctx.query`` from the raw request target (400 invalid_path)."""

    name = "canonical_path"
    phase: Phase = "canonical"

    def step(self, ctx: Context) -> None:
        ctx.path, ctx.query = canonicalize(ctx.request.path)

    async def check(self, ctx: Context) -> None:
        self.step(ctx)

    def element(self, ctx: Context) -> str:
        return ctx.path


class CanonicalPathStage:
    name = "canonical_path"
    phase: Phase = "canonical"

    def build(self, load: Load, route: RouteConfig | None) -> CanonicalPath | None:
        return CanonicalPath() if route is None else None


@dataclass(frozen=True, slots=True)
class Route:
    """Matches (host, method, canonical path) to a route and its plan (404/405)."""

    router: Router
    plans: dict[str, object]
    name: str = "route"
    phase: Phase = "route"

    def step(self, ctx: Context) -> None:
        request = ctx.request
        route = ctx.route = self.router.match(request.host, request.method, ctx.path)
        ctx.plan = self.plans[route.name]

    async def check(self, ctx: Context) -> None:
        self.step(ctx)

    def element(self, ctx: Context) -> str:
        return ctx.route.name if ctx.route is not None else ""


class RouteStage:
    name = "route"
    phase: Phase = "route"

    def build(self, load: Load, route: RouteConfig | None) -> Route | None:
        return Route(load.router, load.plans) if route is None else None


def _one_credential(providers: tuple[IdentityProvider, ...], request: Request) -> None:
    """Raise MultipleCredentials if ``providers`` find credentials in two carriers."""
    seen: str | None = None
    for provider in providers:
        where = provider.presented(request)
        if where is not None and where != seen:
            if seen is not None:
                raise MultipleCredentials(f"credentials in both {seen} and {where}")
            seen = where


def _require_bound(identity: Identity) -> None:
    """A token whose ``cnf`` binding the provider verified, or the mTLS peer."""
    if identity.kind == "mtls":
        return
    cnf = identity.claims.get("cnf") if identity.kind == "jwt" else None
    if not isinstance(cnf, Mapping) or ("x5t#S256" not in cnf and "jkt" not in cnf):
        raise InvalidToken(
            "the route requires a sender-constrained token", reason=R.TOKEN_NOT_SENDER_CONSTRAINED
        )


class Identify:
    """Asks the route's providers in plan order; the first that does not abstain decides.

    Reads the providers from ``ctx.plan`` (its ``providers``, ``exclusive`` and
    ``answers``, see :func:`authz.compiled.credential_plan`), so one object serves every
    route. Each provider is asked ``authenticate_now`` first
    (:mod:`authz.identity.base`); only a WAIT makes the rest a coroutine.
    """

    name = "identity"
    phase: Phase = "identity"

    def __init__(
        self, sender_constrained: bool = False, dpop: tuple[bool, str] | None = None
    ) -> None:
        #: the route takes only sender-constrained credentials (RFC 8705 / RFC 9449)
        self.sender_constrained = sender_constrained
        #: what a request without a credential is told (see MissingCredential.dpop)
        self.dpop = dpop

    def _missing(self) -> MissingCredential:
        exc = MissingCredential("no credential")
        exc.dpop = self.dpop
        return exc

    def step(self, ctx: Context) -> Awaitable[None] | None:
        plan = ctx.plan
        request = ctx.request
        if plan.exclusive:
            _one_credential(plan.exclusive, request)
        for provider, now in plan.answers:
            try:
                found = now(request)
            except AuthzError as exc:  # free unless raised: names the provider for explain
                exc.element = provider.name
                raise
            if found is not None:
                if found is WAIT:
                    return self._wait(ctx, plan.providers.index(provider))
                if self.sender_constrained:
                    _require_bound(found)
                ctx.identity = found
                return None
        raise self._missing()

    async def _wait(self, ctx: Context, first: int) -> None:
        """Await the providers from ``first`` on (the one that said WAIT, then the rest)."""
        request = ctx.request
        for provider in ctx.plan.providers[first:]:
            try:
                found = await provider.authenticate(request)
            except AuthzError as exc:
                exc.element = provider.name
                raise
            if found is not None:
                if self.sender_constrained:
                    _require_bound(found)
                ctx.identity = found
                return
        raise self._missing()

    async def check(self, ctx: Context) -> None:
        pending = self.step(ctx)
        if pending is not None:
            await pending

    def element(self, ctx: Context) -> str:
        return ctx.identity.provider


class IdentityStage:
    name = "identity"
    phase: Phase = "identity"

    def build(self, load: Load, route: RouteConfig | None) -> Identify | None:
        if route is None or not route.providers:
            return None
        return Identify(route.sender_constrained, dpop_challenge(load.config, route))


def dpop_challenge(policy: PolicyConfig, route: RouteConfig) -> tuple[bool, str] | None:
    """What a 401 for a missing credential says on a route with DPoP providers (RFC
    9449 7.1): whether Bearer is still a way in (a provider without ``dpop: required``),
    and the algorithms a proof may use; None when no provider of the route takes DPoP."""
    providers = [policy.provider(name) for name in route.providers]
    dpop = [p.dpop for p in providers if isinstance(p, JwtProviderConfig) and p.dpop]
    if not dpop:
        return None
    bearer = any(
        not isinstance(p, JwtProviderConfig) or p.dpop is None or p.dpop.mode != "required"
        for p in providers
    )
    algs = dict.fromkeys(alg for d in dpop for alg in d.algorithms)
    return bearer, " ".join(algs)


@dataclass(frozen=True, slots=True)
class Authorize:
    """Scopes, claims and SPIFFE IDs of the route against the proven identity (403)."""

    authorizer: Authorizer
    name: str = "authorize"
    phase: Phase = "authorize"

    def step(self, ctx: Context) -> None:
        self.authorizer.check(ctx.identity)

    async def check(self, ctx: Context) -> None:
        self.authorizer.check(ctx.identity)

    def element(self, ctx: Context) -> str:
        return self.authorizer.describe()


class AuthorizeStage:
    name = "authorize"
    phase: Phase = "authorize"

    def build(self, load: Load, route: RouteConfig | None) -> Authorize | None:
        if route is None or not route.providers:
            return None
        authorizer = Authorizer(route)
        return Authorize(authorizer) if authorizer.rules() else None
