"""Frozen, typed configuration: what a policy file says, after loading.

The loader (:mod:`authz.policy.loader`) is the only place that sees raw YAML;
everything past it uses these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from authz.policy.audit_config import AuditConfig
from authz.policy.detection_config import DetectionConfig
from authz.policy.enforcement_config import EnforcementConfig
from authz.policy.ratelimit_config import RateLimitConfig, RuleConfig
from authz.policy.telemetry_config import TracingConfig

MODES = ("enforce", "monitor")
#: How a route with several providers treats a request carrying several credentials:
#: ``exclusive`` denies it (multiple_credentials); ``first_match`` lets the first
#: provider (in route order) whose credential is present decide, for migrations.
CREDENTIAL_MODES = ("exclusive", "first_match")
UNDECLARED = ("deny", "monitor")
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")


@dataclass(frozen=True, slots=True)
class DpopConfig:
    """RFC 9449 DPoP for one JWT provider (its ``dpop`` option)."""

    mode: str = "allowed"  # allowed: Bearer or DPoP | required: DPoP-bound tokens only
    iat_window: float = 60.0  # a proof is accepted this long after its iat
    leeway: float = 5.0  # and this far before it (clock skew)
    algorithms: tuple[str, ...] = ("ES256", "ES384", "ES512", "PS256", "RS256", "EdDSA")
    replay_cache_size: int = 100_000  # jti entries per process (full of live ones: 503)
    #: The name of a ``rate_limits.stores`` Redis store that shares seen ``jti`` values
    #: between processes; None: this process only.
    replay_store: str | None = None


@dataclass(frozen=True, slots=True)
class JwtProviderConfig:
    """An OIDC/JWT issuer. Exactly one key source: jwks_uri, jwks_file or discovery."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwks_uri: str | None = None
    jwks_file: str | None = None  # absolute path
    discovery: bool = False
    leeway: float = 30.0
    max_lifetime: float = 3600.0
    scope_claim: str = "scope"  # "scope" (space-separated string) or "scp" (array)
    header: str = "authorization"  # the header that carries "Bearer <token>"
    jwks_ttl: float = 300.0  # how long fetched keys are used before a refresh
    jwks_refresh_interval: float = 30.0  # at most one unknown-kid refresh per interval
    jwks_stale_ttl: float = 3600.0  # keep the last good keys this long while unreachable
    jwks_timeout: float = 5.0
    cache_size: int = 10_000  # verified-token cache entries
    min_rsa_bits: int = 2048  # RSA keys with a shorter modulus are refused (never below 2048)
    #: Accepted JOSE ``typ`` values, normalised (lower case, no ``application/``);
    #: None: the default (absent, ``jwt`` or ``at+jwt``; see the README's providers).
    typ: tuple[str, ...] | None = None
    dpop: DpopConfig | None = None  # None: DPoP not accepted (a DPoP-bound token is refused)
    type: str = "jwt"


@dataclass(frozen=True, slots=True)
class MtlsProviderConfig:
    """Service identities verified by Envoy's TLS handshake (SPIFFE IDs)."""

    name: str
    trust_domains: tuple[str, ...]
    #: (trust domain, absolute path of its PEM CA bundle), one per trust domain or
    #: none; Envoy's SPIFFE validator then lets a domain's CA vouch for its IDs only.
    trust_bundles: tuple[tuple[str, str], ...] = ()
    type: str = "mtls"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    sha256: str  # lower-case hex digest of the key; the key itself is never stored
    owner: str
    scopes: tuple[str, ...] = ()
    expires_at: float | None = None  # unix time
    created_at: float | None = None  # unix time; None: not declared (the report says so)


@dataclass(frozen=True, slots=True)
class ApiKeyProviderConfig:
    """Legacy API keys, governed: digests only, each with an owner and an expiry."""

    name: str
    header: str = "x-api-key"
    keys: tuple[ApiKey, ...] = ()
    type: str = "api_key"


@dataclass(frozen=True, slots=True)
class IntrospectionProviderConfig:
    """Opaque tokens checked at an RFC 7662 introspection endpoint."""

    name: str
    endpoint: str  # http(s) URL of the introspection endpoint
    client_id: str
    client_secret_file: str  # absolute path; the secret itself is never in the policy
    timeout: float = 2.0  # per call; slower or down: 503 introspection_unavailable
    cache_size: int = 10_000  # answers cached, keyed by the token's SHA-256
    cache_ttl: float = 60.0  # an active answer at most this long (and never past exp)
    negative_ttl: float = 5.0  # an inactive answer this long (bounds calls for junk)
    issuer: str | None = None  # when set, `iss` must be it
    audiences: tuple[str, ...] = ()  # when set, `aud` must hold one
    scope_claim: str = "scope"
    header: str = "authorization"
    type: str = "introspection"


ProviderConfig = (
    JwtProviderConfig | MtlsProviderConfig | ApiKeyProviderConfig | IntrospectionProviderConfig
)

PARAMETER_LOCATIONS = ("path", "query", "header")
JSON_MEDIA_TYPE = "application/json"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class JsonSchema:
    """A JSON Schema (draft 2020-12), self-contained: local ``$ref`` only, into ``$defs``.

    Kept as canonical JSON text so the config stays immutable; validators are compiled
    from it at load (:mod:`authz.validation.schema`).
    """

    text: str
    location: str = ""  # file:line:column of the schema, for messages


@dataclass(frozen=True, slots=True)
class Parameter:
    """A path, query or header parameter of a route's contract."""

    name: str  # header names lower case
    where: str  # one of PARAMETER_LOCATIONS
    required: bool = False
    schema: JsonSchema | None = None  # None: any string


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """Hard limits of the body parsers, checked before any schema."""

    max_depth: int = 32  # nesting of arrays and objects
    max_members: int = 10_000  # object members plus array items, in the whole body
    max_fields: int = 256  # fields of a form body, parameters of a query string


@dataclass(frozen=True, slots=True)
class ContractConfig:
    """What a request to a route must look like (its API contract)."""

    body: JsonSchema | None = None  # JSON Schema of the body (JSON or form fields)
    body_required: bool = False
    #: Allowed media types of the body (lower case, no parameters); a request with a
    #: body of another type is refused with 415.
    content_types: tuple[str, ...] = (JSON_MEDIA_TYPE,)
    max_body_bytes: int = 65_536  # 413 above; also Envoy's buffer limit for the route
    parameters: tuple[Parameter, ...] = ()
    unknown_query_parameters: str = "allow"  # allow | deny
    limits: BodyLimits = field(default_factory=BodyLimits)
    #: Where the contract was declared: "policy" or the OpenAPI file's path.
    origin: str = "policy"

    @property
    def reads_body(self) -> bool:
        """Whether the service needs the request body for this route (Envoy sends it)."""
        return self.body is not None


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    path: str  # template, e.g. /v1/orders/{id} or /static/{rest=**}
    methods: tuple[str, ...]  # upper case; ("*",) for any
    hosts: tuple[str, ...] = ()  # empty: any host; "*.example.com" wildcards allowed
    providers: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    claims: tuple[tuple[str, tuple[str, ...]], ...] = ()  # claim -> any of these values
    spiffe_ids: tuple[str, ...] = ()  # exact SPIFFE IDs
    spiffe_id_prefixes: tuple[str, ...] = ()
    public: bool = False
    mode: str | None = None  # None: the policy's mode
    strip_credential: bool = False
    location: str = ""  # file:line of the route, for messages
    contract: ContractConfig | None = None  # None: nothing validated
    priority: str = "normal"  # critical | normal | background (load shedding order)
    rate_limits: tuple[RuleConfig, ...] = ()  # this route's own limits
    credentials: str = "exclusive"  # one of CREDENTIAL_MODES
    #: Only sender-constrained credentials: a token bound to the client certificate
    #: (``cnf.x5t#S256``) or to a DPoP key (``cnf.jkt``), or the mTLS peer identity.
    sender_constrained: bool = False
    #: The route's effective data class (:mod:`authz.policy.classification`): the
    #: highest of its declared class (default: internal, public for a public route) and
    #: its body fields' ``x-data-class``; set by the loader.
    data_class: str = "internal"
    declared_data_class: str = ""  # as written ("": not given, the default applied)
    #: (JSON pointer of a body field, its class) for each annotated field
    field_data_classes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderNames:
    """Names of the identity headers the service sets for the upstream."""

    subject: str = "x-authz-subject"
    identity_type: str = "x-authz-identity-type"
    issuer: str = "x-authz-issuer"
    scopes: str = "x-authz-scopes"
    provider: str = "x-authz-provider"
    decision_id: str = "x-authz-decision-id"
    #: The remaining quota (the RateLimit field's value) for the upstream.
    ratelimit: str = "x-authz-ratelimit"

    def all(self) -> tuple[str, ...]:
        return (
            self.subject,
            self.identity_type,
            self.issuer,
            self.scopes,
            self.provider,
            self.decision_id,
            self.ratelimit,
        )


#: Headers common backends read as the caller's identity: removed from every request
#: before the upstream sees it (a trailing ``*`` is a prefix; see authz.hygiene).
DEFAULT_STRIP_HEADERS = (
    "x-user-id",
    "x-user",
    "x-remote-user",
    "x-forwarded-user",
    "x-auth-*",
    "x-authenticated-*",
)
METHOD_OVERRIDE_MODES = ("deny", "remove")


@dataclass(frozen=True, slots=True)
class HygieneConfig:
    """Request hygiene (policy ``hygiene:``), see :mod:`authz.hygiene`.

    ``strip_headers``: names (lower case; a trailing ``*`` makes a prefix) removed from
    every request before the upstream sees it; authz's own identity headers are always
    removed or overwritten besides. ``method_override``: ``deny`` refuses a request with a
    method override header or ``_method`` query parameter (400 method_override);
    ``remove`` removes the headers (the query parameter is still refused).
    """

    strip_headers: tuple[str, ...] = DEFAULT_STRIP_HEADERS
    method_override: str = "deny"


DECISION_LOG_FAILURE = ("drop", "deny")


@dataclass(frozen=True, slots=True)
class DecisionLogConfig:
    """What the service does when the decision log cannot keep up or cannot write.

    ``drop``: wait up to ``block_ms`` for room once the queue of ``max_queue`` records is
    full, then count and drop records (logged, health shows it). ``deny``: a decision that
    cannot be recorded is not allowed (503 ``decision_log_unavailable``) until the log
    takes records again.
    """

    on_failure: str = "drop"
    max_queue: int = 65_536
    block_ms: float = 50.0


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    version: str  # content hash of the policy file
    source: str  # path of the policy file
    mode: str = "enforce"
    undeclared_routes: str = "deny"
    realm: str = "authz"
    headers: HeaderNames = field(default_factory=HeaderNames)
    hygiene: HygieneConfig = field(default_factory=HygieneConfig)
    providers: tuple[ProviderConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    #: Other files the policy is made of (OpenAPI documents), absolute paths: a change
    #: to one is a new policy version.
    documents: tuple[str, ...] = ()
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    decision_log: DecisionLogConfig = field(default_factory=DecisionLogConfig)
    #: Behavioural detection (None: the policy has no ``detection:`` section).
    detection: DetectionConfig | None = None
    #: Automatic responses (blocks, revocations, throttles, step-up); None: no section.
    enforcement: EnforcementConfig | None = None
    #: The audit trail (None: the policy has no ``audit:`` section).
    audit: AuditConfig | None = None
    #: ``telemetry.tracing`` (None: the command line decides)
    tracing: TracingConfig | None = None

    def provider(self, name: str) -> ProviderConfig:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)
