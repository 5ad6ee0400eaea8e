"""The reason registry: every reason code a decision can carry, defined once.

A :class:`Reason` is the code (stable snake_case: the deny body's ``error``, the
decision record's ``reason``, a metric label), the HTTP status a request denied
for it gets, the step that raises it and one line saying when. Errors take their
reason from here (:mod:`authz.errors`); raise sites name a constant of this module,
never a string. ``authz reasons`` prints the registry; the README's Decisions table
is generated from it (:func:`markdown_table`) and a test keeps them equal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason code."""

    code: str
    status: int
    #: The step that raises it: canonical, route, identity, authorize, validate,
    #: rate, shed, enforce (an automatic response in force), decision (the engine
    #: itself) or policy (not a request outcome).
    phase: str
    description: str


#: code -> Reason, in the order of the README's table.
REASONS: dict[str, Reason] = {}


def _add(code: str, status: int, phase: str, description: str) -> Reason:
    if code in REASONS:
        raise ValueError(f"reason {code} defined twice")
    REASONS[code] = reason = Reason(code, status, phase, description)
    return reason


ALLOWED = _add("allowed", 200, "decision", "the request may go on (every stage passed)")
INVALID_PATH = _add(
    "invalid_path",
    400,
    "canonical",
    "a path that cannot be read unambiguously: encoded `/` or `\\`, encoded dot segment, "
    "a dot segment with a `;` parameter (`..;`), NUL or control character, invalid UTF-8, "
    "a fragment (the generated Envoy config rejects or resolves some of these before authz "
    "sees them: escaped slashes, NUL, dot segments)",
)
HOST_AMBIGUOUS = _add(
    "host_ambiguous",
    400,
    "canonical",
    "a Host / `:authority` that names no single host: empty, two values merged with a "
    "comma, a userinfo part (`user@host`), whitespace",
)
METHOD_OVERRIDE = _add(
    "method_override",
    400,
    "canonical",
    "a method override (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`, a "
    "`_method` query parameter): the upstream would run a method the decision did not see "
    "(policy `hygiene.method_override: remove` removes the headers instead)",
)
UNDECLARED_ROUTE = _add(
    "undeclared_route",
    404,
    "route",
    "no route declares this host and path (counted by method and path shape)",
)
METHOD_NOT_ALLOWED = _add(
    "method_not_allowed", 405, "route", "the path is declared for other methods (`Allow`)"
)
MISSING_CREDENTIAL = _add(
    "missing_credential", 401, "identity", "no credential of the route's providers"
)
MULTIPLE_CREDENTIALS = _add(
    "multiple_credentials",
    401,
    "identity",
    "more than one token or key, or credentials for two of the route's providers (a JWT "
    "and an API key; the mTLS peer identity does not count; see Several providers)",
)
TOKEN_MALFORMED = _add(
    "token_malformed", 401, "identity", "the JWT cannot be read (not a compact JWS, bad JSON)"
)
TOKEN_ALGORITHM_NOT_ALLOWED = _add(
    "token_algorithm_not_allowed",
    401,
    "identity",
    "the JWT's `alg` is not allowed for the issuer or does not fit its key",
)
TOKEN_HEADER_FORBIDDEN = _add(
    "token_header_forbidden",
    401,
    "identity",
    "the JWT has a `jku`, `x5u`, `x5c`, embedded `jwk` or `crit` header (never honoured)",
)
TOKEN_UNKNOWN_KID = _add(
    "token_unknown_kid", 401, "identity", "no key of the issuer has the JWT's `kid`"
)
TOKEN_BAD_SIGNATURE = _add(
    "token_bad_signature", 401, "identity", "the JWT's signature does not verify"
)
TOKEN_WRONG_ISSUER = _add(
    "token_wrong_issuer", 401, "identity", "the JWT's `iss` is not the provider's"
)
TOKEN_WRONG_AUDIENCE = _add(
    "token_wrong_audience", 401, "identity", "the JWT's `aud` is not accepted"
)
TOKEN_EXPIRED = _add("token_expired", 401, "identity", "the JWT's `exp` has passed")
TOKEN_NOT_YET_VALID = _add(
    "token_not_yet_valid", 401, "identity", "the JWT's `nbf` or `iat` is in the future"
)
TOKEN_MISSING_EXP = _add("token_missing_exp", 401, "identity", "the JWT has no `exp`")
TOKEN_LIFETIME_TOO_LONG = _add(
    "token_lifetime_too_long", 401, "identity", "the JWT lives longer than the provider allows"
)
TOKEN_MISSING_SUBJECT = _add("token_missing_subject", 401, "identity", "the JWT has no `sub`")
TOKEN_DUPLICATE_MEMBER = _add(
    "token_duplicate_member",
    401,
    "identity",
    "the JWT's JOSE header or claims set names a member twice (RFC 7515/7519 4)",
)
TOKEN_CLAIM_TYPE = _add(
    "token_claim_type",
    401,
    "identity",
    "a registered claim has the wrong JSON type (`iss`/`sub` not a string, `aud` not a "
    "string or array of strings, `exp`/`nbf`/`iat` not a number, `scope` not a string, "
    "`scp` not an array of strings); never coerced",
)
TOKEN_NOT_ACCESS_TOKEN = _add(
    "token_not_access_token",
    401,
    "identity",
    "the JWT is not an access token: its `typ` is not one the provider accepts (RFC 9068), "
    "or it is an ID, logout or refresh token (see the provider's `typ`)",
)
TOKEN_CERTIFICATE_MISMATCH = _add(
    "token_certificate_mismatch",
    401,
    "identity",
    "the JWT is bound to a client certificate (`cnf.x5t#S256`, RFC 8705) and the request "
    "came with another certificate or none",
)
TOKEN_NOT_SENDER_CONSTRAINED = _add(
    "token_not_sender_constrained",
    401,
    "identity",
    "the route requires a sender-constrained token (`cnf.x5t#S256` or DPoP `cnf.jkt`) "
    "and this one is not bound (or the provider requires DPoP and it came as `Bearer`)",
)
DPOP_PROOF_INVALID = _add(
    "dpop_proof_invalid",
    401,
    "identity",
    "the `DPoP` proof is missing, malformed, not `dpop+jwt`, badly signed, for another "
    "method or URL, outside the `iat` window, or its `ath` or key does not fit the token "
    '(`WWW-Authenticate: DPoP error="invalid_dpop_proof"`, RFC 9449)',
)
DPOP_PROOF_REPLAYED = _add(
    "dpop_proof_replayed",
    401,
    "identity",
    "the `DPoP` proof's `jti` was already used within the window (RFC 9449 11.1)",
)
DPOP_KEY_MISMATCH = _add(
    "dpop_key_mismatch",
    401,
    "identity",
    "the DPoP proof's key is not the one the token is bound to (`cnf.jkt`, RFC 7638 "
    "thumbprint), or a DPoP-bound token came without the `DPoP` scheme",
)
DPOP_REPLAY_UNAVAILABLE = _add(
    "dpop_replay_unavailable",
    503,
    "identity",
    "the DPoP replay cache cannot answer (its Redis store is down, or the in-memory cache "
    "is full of live proofs): refused, never let through unchecked",
)
TOKEN_INACTIVE = _add(
    "token_inactive",
    401,
    "identity",
    "the introspection endpoint says the token is not active (RFC 7662 `active: false`)",
)
INTROSPECTION_UNAVAILABLE = _add(
    "introspection_unavailable",
    503,
    "identity",
    "the introspection endpoint is down, slow past its timeout or answers garbage: "
    "refused (fail closed), never let through",
)
API_KEY_UNKNOWN = _add("api_key_unknown", 401, "identity", "no such API key (or an empty one)")
API_KEY_EXPIRED = _add("api_key_expired", 401, "identity", "the API key is past its `expires`")
PEER_IDENTITY_INVALID = _add(
    "peer_identity_invalid", 401, "identity", "the verified peer's SPIFFE ID is malformed"
)
UNTRUSTED_TRUST_DOMAIN = _add(
    "untrusted_trust_domain",
    401,
    "identity",
    "the verified peer's SPIFFE ID is from a trust domain the provider does not trust",
)
PEER_IDENTITY_AMBIGUOUS = _add(
    "peer_identity_ambiguous",
    401,
    "identity",
    "the verified peer's certificate has more than one URI SAN; an X.509-SVID has exactly "
    "one, and it is the SPIFFE ID (see mTLS)",
)
PEER_IDENTITY_NOT_URI_SAN = _add(
    "peer_identity_not_uri_san",
    401,
    "identity",
    "the verified peer's certificate carries a SPIFFE ID only outside a URI SAN (a DNS SAN, "
    "say); the SPIFFE ID is read from the URI SAN only (see mTLS)",
)
BODY_MALFORMED = _add(
    "body_malformed", 400, "validate", "the body cannot be read as its media type (see Contracts)"
)
BODY_DUPLICATE_KEY = _add(
    "body_duplicate_key", 400, "validate", "a JSON object or form gives one member twice"
)
BODY_LIMIT_EXCEEDED = _add(
    "body_limit_exceeded",
    400,
    "validate",
    "the body is nested deeper or holds more values than the contract's limits",
)
BODY_MISSING = _add("body_missing", 400, "validate", "no body where the contract requires one")
BODY_INVALID = _add("body_invalid", 400, "validate", "the body breaks its schema")
BODY_UNKNOWN_FIELD = _add(
    "body_unknown_field",
    400,
    "validate",
    "the body has a member the schema does not allow (mass assignment)",
)
PARAMETER_INVALID = _add(
    "parameter_invalid", 400, "validate", "a path, query or header parameter breaks its schema"
)
PARAMETER_MISSING = _add(
    "parameter_missing", 400, "validate", "a required query or header parameter is absent"
)
PARAMETER_DUPLICATE = _add(
    "parameter_duplicate", 400, "validate", "a parameter that takes one value is given twice"
)
PARAMETER_UNKNOWN = _add(
    "parameter_unknown",
    400,
    "validate",
    "a query parameter the contract does not declare (`unknown_query_parameters: deny`)",
)
QUERY_MALFORMED = _add(
    "query_malformed",
    400,
    "validate",
    "the query has an invalid escape or UTF-8, or too many fields",
)
BODY_TOO_LARGE = _add(
    "body_too_large", 413, "validate", "the body is over the contract's `max_body_bytes`"
)
BODY_PARTIAL = _add(
    "body_partial",
    413,
    "validate",
    "Envoy marked the body partial (`x-envoy-auth-partial-body: true`); it is never "
    "validated as if whole",
)
UNSUPPORTED_MEDIA_TYPE = _add(
    "unsupported_media_type",
    415,
    "validate",
    "a body whose `Content-Type` the contract does not allow (or a charset other than UTF-8)",
)
CONTENT_ENCODING_UNSUPPORTED = _add(
    "content_encoding_unsupported",
    415,
    "validate",
    "a body on a route with a contract carries a `Content-Encoding` other than `identity` "
    "(the gateway never passes bytes it could not read)",
)
INSUFFICIENT_SCOPE = _add(
    "insufficient_scope",
    403,
    "authorize",
    "the identity lacks a scope of the route: "
    '`WWW-Authenticate: Bearer …, error="insufficient_scope", scope="…"`',
)
CLAIM_MISMATCH = _add(
    "claim_mismatch", 403, "authorize", "a claim the route requires does not hold an allowed value"
)
SPIFFE_ID_NOT_ALLOWED = _add(
    "spiffe_id_not_allowed", 403, "authorize", "the peer's SPIFFE ID is not allowed on the route"
)
RATE_LIMITED = _add(
    "rate_limited",
    429,
    "rate",
    "a rate rule's bucket is empty: `Retry-After` (seconds until the next request would "
    "pass), `RateLimit-Policy`, `RateLimit`",
)
CONCURRENCY_LIMITED = _add(
    "concurrency_limited",
    429,
    "rate",
    "a concurrency cap is full: `Retry-After` (when the oldest lease ends)",
)
RATE_LIMIT_UNAVAILABLE = _add(
    "rate_limit_unavailable",
    503,
    "rate",
    "the rule's Redis store is unreachable and the rule fails closed "
    "(`on_store_error: deny`): `Retry-After`",
)
OVERLOADED = _add(
    "overloaded",
    503,
    "shed",
    "shed under overload: the route's priority class is below what is being served; `Retry-After`",
)
JWKS_UNAVAILABLE = _add(
    "jwks_unavailable",
    503,
    "identity",
    "the issuer's keys cannot be fetched and the last good ones are too old",
)
DECISION_LOG_UNAVAILABLE = _add(
    "decision_log_unavailable",
    503,
    "decision",
    "`decision_log.on_failure: deny` and the decision log cannot take the record (its "
    "queue is full or its writes fail): `Retry-After: 1`; never let through by monitor mode",
)
AUDIT_UNAVAILABLE = _add(
    "audit_unavailable",
    503,
    "decision",
    "the policy's `audit:` trail cannot take the record (its queue stayed full past "
    "`block_ms`, or `on_full: deny` and it is full or its writes fail): `Retry-After: 1`; "
    "never let through by monitor mode",
)
# Automatic responses (issue 10): a detector's action, or an operator's, in force for
# this caller. The deny body carries only the code; the action and its evidence are in
# the decision record, ``authz explain`` and the control plane.
CALLER_BLOCKED = _add(
    "caller_blocked",
    403,
    "enforce",
    "the client address, its /24 or /64 prefix, or the identity is blocked (by a detector "
    "or an operator) until the block's TTL ends or it is lifted",
)
CREDENTIAL_REVOKED = _add(
    "credential_revoked",
    401,
    "enforce",
    "the token (`jti` or digest), the subject or the API key is revoked until it expires or "
    'an operator lifts it (`WWW-Authenticate: Bearer error="invalid_token"`)',
)
STEP_UP_REQUIRED = _add(
    "step_up_required",
    401,
    "enforce",
    "the caller must authenticate again more strongly (RFC 9470: `WWW-Authenticate: Bearer "
    'error="insufficient_user_authentication"` with `acr_values` / `max_age`)',
)
CALLER_THROTTLED = _add(
    "caller_throttled",
    429,
    "enforce",
    "a detector put this caller on a tighter limit for a TTL and it is spent: `Retry-After`",
)
ENFORCEMENT_UNAVAILABLE = _add(
    "enforcement_unavailable",
    503,
    "enforce",
    "the shared block and revocation store is unreachable and the policy fails closed",
)
INTERNAL_ERROR = _add(
    "internal_error", 500, "decision", "a bug: logged with a stack trace; the request is denied"
)
# The reasons of the abstract classes of the exception tree: a subclass always names
# its own, so no decision carries these today; they stay defined so that a new
# subclass that forgets its reason still maps to a registered code.
FORBIDDEN = _add("forbidden", 403, "decision", "base of every deny (a subclass names its own)")
BAD_REQUEST = _add(
    "bad_request", 400, "validate", "base of request errors (a subclass names its own)"
)
INVALID_CREDENTIAL = _add(
    "invalid_credential", 401, "identity", "base of credential errors (a subclass names its own)"
)
TOKEN_INVALID = _add("token_invalid", 401, "identity", "base of the `token_*` reasons")
DEPENDENCY_UNAVAILABLE = _add(
    "dependency_unavailable",
    503,
    "decision",
    "base of dependency errors (a subclass names its own)",
)
INVALID_POLICY = _add(
    "invalid_policy", 0, "policy", "a policy file cannot be used (a load error, never a decision)"
)


def markdown_table() -> str:
    """The README's Decisions table, one row per code."""
    lines = ["| reason | status | phase | when |", "| --- | --- | --- | --- |"]
    for r in REASONS.values():
        status = str(r.status) if r.status else "-"
        lines.append(f"| `{r.code}` | {status} | {r.phase} | {r.description} |")
    return "\n".join(lines)
