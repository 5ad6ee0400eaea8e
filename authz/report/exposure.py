"""Exposure per data class, from a compiled policy: routes, who reaches them, API keys.

For each route: its class (and where it came from), its methods and path, and who can
reach it: ``anyone`` on a public route; per provider, the issuer of a JWT provider
with the claims the route demands (``sub`` values are the subjects allowed), the
SPIFFE IDs an mTLS provider admits (the route's allowlist, else any ID of the trust
domains), and the API keys whose scopes and claims (``key_id``, ``owner``) pass the
route's checks. For each static API key: its owner, scopes, age (when ``created`` is
declared), expiry and days left, the routes and classes it reaches, and whether it
expires within the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz.policy.classification import CLASSES, RANK
from authz.policy.config import (
    ApiKey,
    ApiKeyProviderConfig,
    JwtProviderConfig,
    MtlsProviderConfig,
    PolicyConfig,
    RouteConfig,
)

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Reach:
    """One way into a route: a provider and what it admits there."""

    provider: str
    type: str  # jwt | mtls | api_key | public
    #: what is admitted: the issuer (jwt), SPIFFE IDs (mtls), key ids (api_key)
    who: tuple[str, ...]
    #: claims the route demands (claim -> allowed values); ``sub`` names subjects
    claims: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class RouteExposure:
    name: str
    methods: tuple[str, ...]
    path: str
    hosts: tuple[str, ...]
    data_class: str
    declared: str  # "" when the default applied
    fields: tuple[tuple[str, str], ...]
    public: bool
    scopes: tuple[str, ...]
    reach: tuple[Reach, ...]
    origin: str  # "policy" or the OpenAPI file


@dataclass(frozen=True, slots=True)
class KeyStatus:
    provider: str
    id: str
    owner: str
    scopes: tuple[str, ...]
    created_at: float | None
    expires_at: float | None
    age_days: float | None
    days_left: float | None
    status: str  # ok | near_expiry | expired
    routes: tuple[str, ...]  # the routes it reaches
    classes: tuple[str, ...]  # their classes, highest first


@dataclass(frozen=True, slots=True)
class ClassExposure:
    data_class: str
    routes: tuple[RouteExposure, ...]
    providers: tuple[str, ...]
    scopes: tuple[str, ...]
    spiffe_ids: tuple[str, ...]
    subjects: tuple[str, ...]  # the values of ``sub`` the routes demand
    api_keys: tuple[str, ...]  # provider/key id
    public_routes: int


@dataclass(frozen=True, slots=True)
class Exposure:
    source: str
    version: str
    now: float
    expiry_days: float
    classes: tuple[ClassExposure, ...]  # highest class first, every class listed
    keys: tuple[KeyStatus, ...]

    def class_of(self) -> dict[str, str]:
        """Route name -> its class (for records that name a route but no class)."""
        return {r.name: c.data_class for c in self.classes for r in c.routes}


def key_reaches(key: ApiKey, route: RouteConfig) -> bool:
    """Whether the key's identity passes the route's scope and claim checks."""
    if not set(route.scopes) <= set(key.scopes):
        return False
    claims = {"key_id": key.id, "owner": key.owner}
    return all(claims.get(name) in values for name, values in route.claims)


def _reach(route: RouteConfig, config: PolicyConfig) -> tuple[Reach, ...]:
    if route.public:
        return (Reach("", "public", ("anyone",)),)
    out = []
    spiffe = (*route.spiffe_ids, *(p + "*" for p in route.spiffe_id_prefixes))
    for name in route.providers:
        try:
            p = config.provider(name)
        except KeyError:
            continue
        if isinstance(p, JwtProviderConfig):
            out.append(Reach(name, "jwt", (p.issuer,), route.claims))
        elif isinstance(p, MtlsProviderConfig):
            who = spiffe or tuple(f"spiffe://{td}/*" for td in p.trust_domains)
            out.append(Reach(name, "mtls", who))
        elif isinstance(p, ApiKeyProviderConfig):
            ids = tuple(k.id for k in p.keys if key_reaches(k, route))
            out.append(Reach(name, "api_key", ids, route.claims))
    return tuple(out)


def _route(route: RouteConfig, config: PolicyConfig) -> RouteExposure:
    return RouteExposure(
        name=route.name,
        methods=route.methods,
        path=route.path,
        hosts=route.hosts,
        data_class=route.data_class,
        declared=route.declared_data_class,
        fields=route.field_data_classes,
        public=route.public,
        scopes=route.scopes,
        reach=_reach(route, config),
        origin=route.contract.origin if route.contract is not None else "policy",
    )


def _key(
    provider: ApiKeyProviderConfig,
    key: ApiKey,
    routes: tuple[RouteConfig, ...],
    now: float,
    expiry_days: float,
) -> KeyStatus:
    reached = [r for r in routes if provider.name in r.providers and key_reaches(key, r)]
    classes = sorted({r.data_class for r in reached}, key=lambda c: -RANK.get(c, 0))
    days_left = (key.expires_at - now) / DAY if key.expires_at is not None else None
    if days_left is not None and days_left <= 0:
        status = "expired"
    elif days_left is not None and days_left <= expiry_days:
        status = "near_expiry"
    else:
        status = "ok"
    return KeyStatus(
        provider=provider.name,
        id=key.id,
        owner=key.owner,
        scopes=key.scopes,
        created_at=key.created_at,
        expires_at=key.expires_at,
        age_days=(now - key.created_at) / DAY if key.created_at is not None else None,
        days_left=days_left,
        status=status,
        routes=tuple(r.name for r in reached),
        classes=tuple(classes),
    )


def exposure(config: PolicyConfig, *, now: float, expiry_days: float = 30.0) -> Exposure:
    """The policy's exposure per class (every class, highest first) and its API keys."""
    routes = [_route(r, config) for r in config.routes]
    classes = []
    for data_class in reversed(CLASSES):
        mine = tuple(r for r in routes if r.data_class == data_class)
        reach = [x for r in mine for x in r.reach]
        classes.append(
            ClassExposure(
                data_class=data_class,
                routes=mine,
                providers=tuple(sorted({x.provider for x in reach if x.provider})),
                scopes=tuple(sorted({s for r in mine for s in r.scopes})),
                spiffe_ids=tuple(sorted({w for x in reach if x.type == "mtls" for w in x.who})),
                subjects=tuple(
                    sorted({v for x in reach for n, vs in x.claims if n == "sub" for v in vs})
                ),
                api_keys=tuple(
                    sorted(
                        {f"{x.provider}/{k}" for x in reach if x.type == "api_key" for k in x.who}
                    )
                ),
                public_routes=sum(1 for r in mine if r.public),
            )
        )
    keys = tuple(
        _key(p, k, config.routes, now, expiry_days)
        for p in config.providers
        if isinstance(p, ApiKeyProviderConfig)
        for k in p.keys
    )
    return Exposure(
        source=config.source,
        version=config.version,
        now=now,
        expiry_days=expiry_days,
        classes=tuple(classes),
        keys=keys,
    )
