"""Frozen, typed configuration of behavioural detection (the policy's ``detection:``).

Built by :mod:`authz.policy.detection_loader`; nothing past the loader sees the raw
YAML. Every threshold has a default that works on the seeded scenario
(``bench/detect_compare.py``); a policy without ``detection:`` has no detection at all
(``PolicyConfig.detection`` is None and no stage is built).

A learned model (river's Half-Space Trees) was tried beside these and is not an
option: on the seeded scenario it caught nothing they miss and added false actions
(``bench/detect_compare.py``, ``bench/learned_model.py``).

Each detector has a ``response`` (log, throttle, step_up, block, revoke), a
``target`` (what the action applies to), a ``ttl`` and a ``mode`` (None: the
section's mode). In ``monitor`` mode an action is recorded (``Action.monitor``)
and not enforced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Detector names, in the order the scorer runs them.
DETECTORS = ("honeypot", "credential_stuffing", "enumeration", "token_sharing", "data_volume")
#: ``target: identity`` resolves per caller: its token, API key or subject (then address).
TARGETS = ("address", "prefix", "subject", "api_key", "token", "identity")


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """What every detector has: its response and for how long, in which mode."""

    name: str
    enabled: bool = True
    response: str = "log"
    target: str = "address"
    ttl: float = 600.0
    #: None: the section's mode
    mode: str | None = None
    location: str = ""


@dataclass(frozen=True, slots=True)
class CredentialStuffingConfig(DetectorConfig):
    """Refused credentials per address and per /24 (/64) prefix; many distinct
    credentials refused from one address."""

    name: str = "credential_stuffing"
    response: str = "block"
    target: str = "address"
    ttl: float = 900.0
    window: float = 60.0
    #: failed authentications from one address within ``window``
    failures: int = 20
    #: ... from one /24 (IPv4) or /64 (IPv6) prefix, and half its requests (the action
    #: then targets the prefix)
    prefix_failures: int = 40
    #: distinct credentials refused from one address within ``window`` (a NAT of N
    #: users whose tokens last an hour refuses about N/60 a minute: raise it for big NATs)
    distinct_identities: int = 10


@dataclass(frozen=True, slots=True)
class EnumerationConfig(DetectorConfig):
    """High-cardinality or sequential object ids; volume far above the caller's own
    baseline and above the route's population."""

    name: str = "enumeration"
    response: str = "throttle"
    target: str = "identity"
    ttl: float = 600.0
    window: float = 60.0
    #: distinct object ids (path parameters) one caller touches on one route per window
    distinct_ids: int = 50
    #: ... and that many times the caller's own baseline of distinct ids per window
    ids_factor: float = 4.0
    #: consecutive requests whose numeric id is the previous one +-1 (a walk)
    sequential: int = 25
    #: upstream 404s (from the access-log feed) per window, at least half the requests
    not_found: int = 30
    #: volume: requests per window at least this many times the caller's own EWMA ...
    rate_factor: float = 8.0
    #: ... and this many times the route population's current per-caller rate
    population_factor: float = 8.0
    #: ... and at least this many requests per window (a quiet caller is never volume)
    min_requests: int = 120


@dataclass(frozen=True, slots=True)
class TokenSharingConfig(DetectorConfig):
    """One token (jti or digest) or one subject from many client addresses."""

    name: str = "token_sharing"
    response: str = "revoke"
    target: str = "token"
    ttl: float = 3600.0
    window: float = 600.0
    #: distinct client addresses presenting the same token within ``window``
    addresses: int = 8
    #: distinct client addresses of one subject within ``window`` (0: not checked)
    subject_addresses: int = 24


@dataclass(frozen=True, slots=True)
class DataVolumeConfig(DetectorConfig):
    """Bytes one caller moves (response bytes from the access-log feed plus request
    bodies) far above its own baseline and the route's population."""

    name: str = "data_volume"
    response: str = "log"
    target: str = "identity"
    ttl: float = 600.0
    window: float = 60.0
    #: bytes per window at least this many times the caller's own EWMA ...
    factor: float = 10.0
    #: ... and this many times the route population's current per-caller bytes
    population_factor: float = 10.0
    #: ... and at least this many bytes per window
    min_bytes: int = 10_000_000


@dataclass(frozen=True, slots=True)
class HoneypotConfig(DetectorConfig):
    """Decoy paths nothing legitimate calls: any hit marks the caller's address and
    identity hostile. Acts from the first request (no warm-up)."""

    name: str = "honeypot"
    response: str = "block"
    target: str = "address"
    ttl: float = 3600.0
    #: canonical path patterns: ``*`` within a segment, ``**`` across segments
    paths: tuple[str, ...] = ()
    #: besides the address, act on the identity the hit carried (token, key, subject)
    identity: bool = True


@dataclass(frozen=True, slots=True)
class TablesConfig:
    """Bounds of every detection table (least recently used entries are evicted)."""

    #: per-caller features (addresses, prefixes, identities)
    callers: int = 100_000
    #: per-token features (distinct addresses per token)
    tokens: int = 100_000
    #: per-route features and population baselines
    routes: int = 1_000


@dataclass(frozen=True, slots=True)
class DetectionConfig:
    """The policy's ``detection:`` section."""

    mode: str = "monitor"
    #: no action (but the honeypot's) before this much traffic time has passed
    warmup: float = 60.0
    #: the bounded observation queue (full: the observation is dropped and counted)
    queue: int = 65_536
    #: where the detectors score: ``process`` (a child process of each serving process,
    #: fed in batches: the request path's process pays the stage and the hand-off only)
    #: or ``inline`` (an asyncio task in the serving process, sharing its GIL)
    scorer: str = "process"
    #: how often the background scorer drains the queue, seconds
    interval: float = 0.2
    #: the baselines' bucket (one EWMA sample per caller and route per bucket)
    bucket: float = 10.0
    #: EWMA weight of a new bucket (0..1)
    alpha: float = 0.1
    tables: TablesConfig = field(default_factory=TablesConfig)
    #: ``rate_limits.trusted_hops``, copied by the loader: a request only the access-log
    #: feed saw (a public route) is given the client address the check would read
    trusted_hops: int = 0
    honeypot: HoneypotConfig = field(default_factory=HoneypotConfig)
    credential_stuffing: CredentialStuffingConfig = field(default_factory=CredentialStuffingConfig)
    enumeration: EnumerationConfig = field(default_factory=EnumerationConfig)
    token_sharing: TokenSharingConfig = field(default_factory=TokenSharingConfig)
    data_volume: DataVolumeConfig = field(default_factory=DataVolumeConfig)
    location: str = ""

    def mode_of(self, detector: DetectorConfig) -> str:
        return detector.mode or self.mode
