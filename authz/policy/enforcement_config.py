"""Frozen, typed configuration of automatic responses: the policy's ``enforcement``.

Built by :mod:`authz.policy.enforcement_loader`; used by :mod:`authz.respond`. A
policy without ``enforcement:`` (and without ``detection:``) has no enforcer and its
requests pay nothing for it.

```yaml
enforcement:
  store: memory                 # or {redis: "redis://host:6379/0", on_error: allow, timeout: 50ms}
  max_entries: 100000           # blocks + revocations + throttles + step-ups, per process
  step_up: {acr_values: ["urn:example:mfa"], max_age: 300s}
  throttle: {requests: 10, per: 60s}
  block_ttl: 15m                # an operator's block without --ttl
  revoke_ttl: 24h               # a revocation without a TTL (the credential's life at most)
  actions: 1000                 # recent automatic actions kept for `authz actions`
  public_routes: skip           # or check: Envoy calls the service on public routes too
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

from authz.policy.redis_target import RedisTarget

ON_ERROR = ("allow", "deny")


@dataclass(frozen=True, slots=True)
class EnforcementRedisConfig:
    """Blocks and revocations shared by every worker and replica through one Redis."""

    url: str  # redis://[user:password@]host:port/db, rediss://..., unix://...
    #: Redis unreachable: ``allow`` keeps enforcing the last mirror; ``deny`` refuses
    #: every request (503 enforcement_unavailable) until it is back and resynced.
    on_error: str = "allow"
    timeout: float = 0.05  # seconds, per command
    key_prefix: str = "authz:enf:"
    #: How often a lost subscription tries to reconnect (and resync).
    retry_interval: float = 0.5
    #: Sentinel or Cluster, credentials and TLS (None: just ``url``)
    target: RedisTarget | None = None

    @property
    def deployment(self) -> RedisTarget:
        return self.target if self.target is not None else RedisTarget(url=self.url)


@dataclass(frozen=True, slots=True)
class StepUpConfig:
    """What a step-up asks for (RFC 9470): a token whose ``acr`` is one of
    ``acr_values`` (any, when empty) and whose ``auth_time`` is at most ``max_age``
    seconds old satisfies it."""

    acr_values: tuple[str, ...] = ()
    max_age: float = 300.0


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    """The tighter limit a throttled caller gets: ``requests`` per ``per`` seconds."""

    requests: int = 10
    per: float = 60.0

    @property
    def interval(self) -> float:
        return self.per / self.requests


@dataclass(frozen=True, slots=True)
class EnforcementConfig:
    """The policy's ``enforcement`` section (defaults: an in-process store)."""

    store: EnforcementRedisConfig | None = None  # None: in this process only
    max_entries: int = 100_000
    step_up: StepUpConfig = field(default_factory=StepUpConfig)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    block_ttl: float = 900.0
    revoke_ttl: float = 86_400.0
    actions: int = 1000
    #: ``skip``: public routes with nothing else to check skip the service (Envoy
    #: never calls it there, so no block reaches them); ``check``: the generated Envoy
    #: config calls it on them too, and address blocks and throttles apply there
    public_routes: str = "skip"
    location: str = ""  # file:line:column of the section, for messages

    @property
    def store_name(self) -> str:
        return "redis" if self.store is not None else "memory"
