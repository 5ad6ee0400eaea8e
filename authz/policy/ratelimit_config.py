"""Frozen, typed configuration of rate limits, concurrency caps and load shedding.

The policy's ``rate_limits`` section and each route's ``rate_limits`` and
``priority`` become these objects in :mod:`authz.policy.ratelimit_loader`;
nothing past the loader sees the raw YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from authz.policy.redis_target import RedisTarget

#: Priority classes, highest first. Under overload the lowest are shed first.
PRIORITIES = ("critical", "normal", "background")

#: Key parts that need an identity (these rules run after authentication).
IDENTITY_PARTS = ("subject", "api_key", "spiffe_id", "issuer")
#: Key parts that need the route (these rules run after routing).
ROUTE_PARTS = ("route",)
#: Every key part; ``claim:NAME`` (identity) and ``header:NAME`` are added to these.
KEY_PARTS = (*IDENTITY_PARTS, "route", "client_address", "method")

MEMORY_STORE = "memory"


@dataclass(frozen=True, slots=True)
class RedisStoreConfig:
    """A Redis server shared by every worker and replica."""

    name: str
    url: str  # redis://[user:password@]host:port/db or rediss://...
    timeout: float = 0.1  # seconds, per command (connect, write, read)
    pool_size: int = 16  # connections per process
    key_prefix: str = "authz:rl:"
    #: After a failure, calls skip Redis (no waiting on timeouts) for this long,
    #: then one call tries again; success ends the outage.
    retry_interval: float = 1.0
    type: str = "redis"
    #: Sentinel or Cluster, credentials and TLS (None: just ``url``)
    target: RedisTarget | None = None

    @property
    def deployment(self) -> RedisTarget:
        return self.target if self.target is not None else RedisTarget(url=self.url)


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """One limit: a GCRA rate (``limit`` per ``period``, ``burst`` at once) or a
    concurrency cap (``concurrency`` leases of ``lease`` seconds each)."""

    name: str
    key: tuple[str, ...]  # key parts; () is one bucket for everything the rule covers
    limit: int = 0  # rate rules: tokens per period
    period: float = 0.0  # seconds
    burst: int = 0  # rate rules: bucket capacity; concurrency rules: the cap
    lease: float = 0.0  # concurrency rules: how long an admitted request holds its slot
    store: str = MEMORY_STORE
    on_store_error: str = "deny"  # deny (503 rate_limit_unavailable) | local
    shadow: bool = False  # count what it would limit, never limit
    batch: int = 0  # batched sync (Redis only): admissions counted locally between syncs
    sync_interval: float = 0.1  # batched: the longest a replica works on one view
    route: str | None = None  # the route that declares it; None: a global rule
    location: str = ""  # file:line:column, for messages

    @property
    def concurrency(self) -> bool:
        return self.lease > 0

    @property
    def interval(self) -> float:
        """Seconds per token (rate rules)."""
        return self.period / self.limit if self.limit else 0.0

    @property
    def needs_identity(self) -> bool:
        return any(p in IDENTITY_PARTS or p.startswith("claim:") for p in self.key)

    @property
    def needs_route(self) -> bool:
        return "route" in self.key


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    """Adaptive shedding from the upstream's health (``rate_limits.overload.adaptive``):
    a gradient concurrency limit from Envoy's access-log feed, see
    :mod:`authz.ratelimit.adaptive` for the algorithm. Defaults are documented there
    and in the README."""

    #: Seconds per measurement window; the limit is recomputed at the end of each.
    interval: float = 1.0
    #: A route's latency may reach this many times its baseline before the limit falls.
    tolerance: float = 1.5
    #: Seconds the latency baseline (a slow moving average) spans; a shift that lasts
    #: much longer than this becomes the new normal.
    baseline: float = 60.0
    #: Weight of a new limit against the old one when latency is high, per window
    #: (0 < smoothing <= 1): 1 takes it at once (Envoy's adaptive concurrency filter),
    #: Netflix's Gradient2 uses 0.2; 0.5 halves the way each window.
    smoothing: float = 0.5
    #: Bounds of the limit (upstream requests in flight), and where it starts.
    min_limit: float = 10.0
    max_limit: float = 10_000.0
    initial_limit: float = 100.0
    #: Healthy windows raise the limit to at least this many times the concurrency seen.
    headroom: float = 2.0
    #: A route's upstream 5xx share (per window) above which the limit backs off ...
    error_rate: float = 0.1
    #: ... by this factor per window (multiplicative decrease, as AIMD).
    backoff: float = 0.9
    #: Entries a route needs in a window to count (fewer: it says nothing this window).
    min_samples: int = 5
    #: Demand above the limit sheds ``background``; above this many times it, ``normal`` too.
    normal_above: float = 1.5
    #: No entry from the feed for this long: adaptive shedding pauses (level 0).
    stale_after: float = 5.0
    #: Routes tracked at most (more share one bucket).
    max_routes: int = 1000


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    """When to shed lower-priority routes (503 ``overloaded`` with Retry-After)."""

    #: Decisions in flight in this process above which ``background`` routes are shed.
    background_at: int | None = None
    #: ... above which ``normal`` routes are shed too. ``critical`` is never shed.
    normal_at: int | None = None
    #: While this file exists, shed what it names: ``background`` (also when empty)
    #: or ``normal`` (normal and background).
    signal_file: str | None = None
    retry_after: float = 5.0
    #: Adaptive shedding from the access-log feed; None: off.
    adaptive: AdaptiveConfig | None = None

    @property
    def enabled(self) -> bool:
        return (
            self.background_at is not None
            or self.normal_at is not None
            or self.signal_file is not None
            or self.adaptive is not None
        )


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """The policy's ``rate_limits`` section (all defaults: no limits at all)."""

    stores: tuple[RedisStoreConfig, ...] = ()
    #: In-process buckets per process (memory store, local fallback, batched views);
    #: beyond it the least recently used are evicted.
    max_keys: int = 100_000
    #: Proxies in front of Envoy whose X-Forwarded-For entries are trusted.
    trusted_hops: int = 0
    #: IPv6 client addresses are keyed by this prefix (a host usually owns a /64).
    ipv6_prefix: int = 64
    #: RateLimit-Policy and RateLimit on responses to the client.
    response_headers: bool = True
    rules: tuple[RuleConfig, ...] = ()  # global rules
    overload: OverloadConfig = field(default_factory=OverloadConfig)

    def store(self, name: str) -> RedisStoreConfig | None:
        for s in self.stores:
            if s.name == name:
                return s
        return None
