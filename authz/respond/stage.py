"""The two enforcement stages and the one place the enforcer is made.

- ``enforce_address`` (phase ``request``: before routing, so a blocked address is
  refused on undeclared paths too, and before any rate limit is charged): blocks and
  throttles of the client address and its /24 or /64; the shared store being down
  with ``on_error: deny`` refuses here (503 enforcement_unavailable).
- ``enforce_identity`` (phase ``authorize``, before the scope check, so a revoked
  token gets 401 rather than 403): revocations, blocks, step-ups and throttles of the
  verified identity (subject, API key, token), and step-ups of the address.

Both are built only when the policy has ``enforcement:`` or ``detection:``; each
costs one attribute read while nothing could match, and one dict lookup per target
kind the request has otherwise, whatever the number of entries.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import cast

from authz.detect.events import ACTION_SINK
from authz.model import Identity
from authz.policy.config import ApiKeyProviderConfig, JwtProviderConfig, PolicyConfig, RouteConfig
from authz.policy.enforcement_config import EnforcementConfig
from authz.ratelimit.keys import client_address
from authz.ratelimit.runtime import RateLimitRuntime
from authz.respond.enforcer import Enforcer, Hit
from authz.respond.targets import address_and_prefix, request_token_id
from authz.respond.throttle import throttle_store_config
from authz.stages import Context, Load, Phase, Shared

log = logging.getLogger("authz.respond")

ADDRESS_RESPONSES = ("block", "throttle")
#: Token ids kept per stage for tokens without a jti (then the cache starts over).
TOKEN_ID_CACHE = 4096
#: Where the enforcer is kept if another sink took ACTION_SINK first.
FALLBACK_NAME = "respond.enforcer"


def enforcement_of(config: PolicyConfig) -> EnforcementConfig | None:
    """The policy's enforcement settings: its section, the defaults when it has only
    ``detection:`` (detectors need somewhere to act), else None (no enforcer)."""
    if config.enforcement is not None:
        return config.enforcement
    if getattr(config, "detection", None) is not None:
        return EnforcementConfig()
    return None


def enforcer_of(shared: Shared, config: EnforcementConfig) -> Enforcer:
    """The process's enforcer (made by the first policy that needs it, kept across
    reloads), registered as a runtime and as the :data:`ACTION_SINK`."""

    def make() -> Enforcer:
        runtime = RateLimitRuntime.of(shared)
        store = throttle_store_config(config)
        return Enforcer(
            config,
            metrics=shared.metrics,
            memory=runtime.memory,
            throttle_store=runtime.redis_store(store) if store is not None else None,
        )

    found = shared.get(ACTION_SINK, make)
    if not isinstance(found, Enforcer):  # a sink made before any policy needed us
        log.warning("%s holds %s: detectors' actions will not be enforced until restart",
                    ACTION_SINK, type(found).__name__)  # fmt: skip
        found = shared.get(FALLBACK_NAME, make)
    shared.runtimes.add(found)
    found.configure(config)
    return found


def find_enforcer(shared: Shared) -> Enforcer | None:
    """The process's enforcer if a policy made one (the control plane asks)."""
    for name in (ACTION_SINK, FALLBACK_NAME):
        found = shared.get(name, lambda: None)
        if isinstance(found, Enforcer):
            return found
    return None


@dataclass(frozen=True, slots=True)
class EnforceAddress:
    enforcer: Enforcer
    trusted_hops: int
    name: str = "enforce_address"
    phase: Phase = "request"

    def step(self, ctx: Context) -> Awaitable[None] | None:
        enforcer = self.enforcer
        if not enforcer.request_active:
            return None
        if enforcer.failing:
            raise enforcer.unavailable()
        request = ctx.request
        address = request.source_address
        if self.trusted_hops:
            address = client_address(
                address, request.headers.get("x-forwarded-for"), self.trusted_hops
            )
        ip, prefix = address_and_prefix(address)
        index = enforcer.table.index
        one, two = index["address"].get(ip), index["prefix"].get(prefix)
        if one is None and two is None:
            return None
        hits = cast(
            tuple[Hit, ...], (two,) if one is None else (one,) if two is None else (one, two)
        )
        return enforcer.enforce(
            hits, ctx.identity, responses=ADDRESS_RESPONSES, explain=ctx.explain
        )

    def hits(self, ctx: Context) -> tuple[Hit, ...]:
        request = ctx.request
        address = request.source_address
        if self.trusted_hops:
            address = client_address(
                address, request.headers.get("x-forwarded-for"), self.trusted_hops
            )
        ip, prefix = address_and_prefix(address)
        index = self.enforcer.table.index
        one, two = index["address"].get(ip), index["prefix"].get(prefix)
        if one is None:
            return () if two is None else (two,)
        return (one,) if two is None else (one, two)

    async def check(self, ctx: Context) -> None:
        pending = self.step(ctx)
        if pending is not None:
            await pending

    def element(self, ctx: Context) -> str:
        return _summary(self.enforcer, "address and prefix")


class EnforceAddressStage:
    name = "enforce_address"
    phase: Phase = "request"

    def build(self, load: Load, route: RouteConfig | None) -> EnforceAddress | None:
        config = enforcement_of(load.config)
        if route is not None or config is None:
            return None
        enforcer = enforcer_of(load.shared, config)
        return EnforceAddress(enforcer, load.config.rate_limits.trusted_hops)


@dataclass(frozen=True, slots=True)
class EnforceIdentity:
    enforcer: Enforcer
    trusted_hops: int
    #: JWT provider -> the header carrying its token (a token without jti is named by
    #: the digest of what was presented)
    token_headers: dict[str, str]
    #: API key id -> its digest (the first 16 hex digits of the key's SHA-256)
    key_digests: dict[str, str]
    address: EnforceAddress
    #: id(identity) -> (identity, its token id), for tokens without a jti (bounded)
    token_ids: dict[int, tuple[Identity, str]] = field(default_factory=dict)
    name: str = "enforce_identity"
    phase: Phase = "authorize"

    def step(self, ctx: Context) -> Awaitable[None] | None:
        enforcer = self.enforcer
        if not enforcer.identity_active:
            return None
        identity = ctx.identity
        index = enforcer.table.index
        subject = identity.subject
        by_subject = index["subject"].get(subject) if subject else None
        by_credential = None
        kind = identity.kind
        if kind == "jwt":
            tokens = index["token"]
            if tokens:
                by_credential = tokens.get(self.token_id(identity, ctx))
        elif kind == "api_key":
            keys = index["api_key"]
            if keys:
                key_id = str(identity.claims.get("key_id", ""))
                by_credential = keys.get(key_id) or keys.get(self.key_digests.get(key_id, ""))
        by_address: tuple[Hit, ...] = ()
        if enforcer.address_step_ups:
            by_address = tuple(
                h for h in self.address.hits(ctx) if any(e.response == "step_up" for e in h)
            )
        if by_subject is None and by_credential is None and not by_address:
            return None
        hits = tuple(h for h in (by_subject, by_credential) if h is not None) + by_address
        return enforcer.enforce(hits, identity, explain=ctx.explain)

    def token_id(self, identity: Identity, ctx: Context) -> str:
        """The token's jti, else the digest of what was presented (kept per identity:
        the JWT provider hands out one Identity per cached token)."""
        jti = identity.claims.get("jti")
        if type(jti) is str and jti:
            return jti
        cache = self.token_ids
        found = cache.get(id(identity))
        if found is not None and found[0] is identity:
            return found[1]
        header = self.token_headers.get(identity.provider, "authorization")
        name = request_token_id(identity, ctx.request, header)
        if len(cache) >= TOKEN_ID_CACHE:
            cache.clear()
        cache[id(identity)] = (identity, name)
        return name

    async def check(self, ctx: Context) -> None:
        pending = self.step(ctx)
        if pending is not None:
            await pending

    def element(self, ctx: Context) -> str:
        return _summary(self.enforcer, "identity")


class EnforceIdentityStage:
    name = "enforce_identity"
    phase: Phase = "authorize"

    def build(self, load: Load, route: RouteConfig | None) -> EnforceIdentity | None:
        config = enforcement_of(load.config)
        if route is None or config is None or not route.providers:
            return None
        enforcer = enforcer_of(load.shared, config)
        policy = load.config
        token_headers = {
            p.name: p.header for p in policy.providers if isinstance(p, JwtProviderConfig)
        }
        key_digests = {
            k.id: k.sha256[:16]
            for p in policy.providers
            if isinstance(p, ApiKeyProviderConfig)
            for k in p.keys
        }
        hops = policy.rate_limits.trusted_hops
        return EnforceIdentity(
            enforcer, hops, token_headers, key_digests, EnforceAddress(enforcer, hops)
        )


def _summary(enforcer: Enforcer, what: str) -> str:
    counts = enforcer.table.counts()
    held = ", ".join(f"{n} {r}" for r, n in counts.items() if n)
    return f"enforcement ({what}): no entry matches" + (f" ({held} in force)" if held else "")


#: In the order they are registered (authz.pipeline): the address check in ``request``
#: before the rate limits, the identity check in ``authorize`` before the scope check.
ENFORCE_ADDRESS = EnforceAddressStage()
ENFORCE_IDENTITY = EnforceIdentityStage()
