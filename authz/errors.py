"""The one exception tree of authz.

Every leaf carries a stable snake_case ``reason`` (used in the deny body, the
decision log and metric labels) and the HTTP ``status`` a request denied for it
gets, both from its :class:`~authz.reasons.Reason` in the registry
(:mod:`authz.reasons`): a class names it with ``class X(Base, reason=R.CODE)`` and
a raise site that picks one of several passes ``reason=R.CODE``, never a string.
Library errors are translated into these at the edge of each stage, so nothing past
a stage sees a PyJWT or jsonschema exception.

::

    AuthzError
    ├── PolicyError                      policy file could not be used (not a request error)
    ├── RequestError              400    the request itself cannot be read
    │   ├── InvalidPath           400    invalid_path
    │   ├── AmbiguousRequest      400    host_ambiguous, method_override (authz.hygiene)
    │   └── ContractViolation     400    the request breaks its route's contract (body_*,
    │       │                            parameter_*, query_malformed); the deny body names
    │       │                            where ("in": body|query|path|header, "location": a
    │       │                            JSON pointer), never the offending value
    │       ├── BodyTooLarge      413    body_too_large, body_partial
    │       ├── UnsupportedMediaType 415 unsupported_media_type
    │       └── UnsupportedEncoding  415 content_encoding_unsupported
    ├── RouteError
    │   ├── UndeclaredRoute       404    undeclared_route
    │   └── MethodNotAllowed      405    method_not_allowed
    ├── AuthenticationError       401    (WWW-Authenticate: Bearer error="invalid_token")
    │   ├── MissingCredential     401    missing_credential   (no error= attribute, RFC 6750 3.1)
    │   ├── MultipleCredentials   401    multiple_credentials
    │   ├── InvalidToken          401    token_* reasons (malformed, algorithm, header, kid,
    │   │                                signature, issuer, audience, expired, ...)
    │   │   └── DpopError         401    dpop_* reasons (WWW-Authenticate: DPoP, RFC 9449 7.1)
    │   ├── InvalidApiKey         401    api_key_unknown / api_key_expired
    │   └── InvalidPeerIdentity   401    peer_identity_invalid / untrusted_trust_domain /
    │                                    peer_identity_ambiguous / peer_identity_not_uri_san
    ├── AuthorizationError        403
    │   ├── InsufficientScope     403    insufficient_scope   (error="insufficient_scope")
    │   ├── ClaimMismatch         403    claim_mismatch
    │   └── SpiffeIdNotAllowed    403    spiffe_id_not_allowed
    ├── RateLimitError            429    (Retry-After, RateLimit-Policy, RateLimit)
    │   ├── RateLimited           429    rate_limited          a rate rule's bucket is empty
    │   └── ConcurrencyLimited    429    concurrency_limited   a concurrency cap is full
    ├── DependencyError           503    jwks_unavailable
    │   ├── RateLimitUnavailable  503    rate_limit_unavailable  (Redis down, rule fails closed)
    │   ├── DecisionLogUnavailable 503   decision_log_unavailable  (the decision log cannot take
    │   │                                records and its policy is on_failure: deny)
    │   └── AuditUnavailable      503    audit_unavailable  (the audit trail cannot take records)
    ├── Overloaded                503    overloaded            load shed by priority class
    ├── EnforcementError                 an automatic response in force (authz.respond);
    │   │                                ``element`` names the action (detector or operator)
    │   ├── CallerBlocked         403    caller_blocked        address, /24 or /64, identity
    │   ├── CredentialRevoked     401    credential_revoked    (error="invalid_token")
    │   ├── StepUpRequired        401    step_up_required      (RFC 9470: error=
    │   │                                "insufficient_user_authentication", acr_values, max_age)
    │   ├── CallerThrottled       429    caller_throttled      (Retry-After)
    │   └── EnforcementUnavailable 503   enforcement_unavailable  (shared store down, fails closed)
    └── InternalError             500    internal_error
"""

from __future__ import annotations

from typing import Any

from authz import reasons as R
from authz.reasons import Reason


class AuthzError(Exception):
    """Base of every error authz raises on purpose."""

    status: int = R.FORBIDDEN.status
    reason: str = R.FORBIDDEN.code
    #: Extra response headers for the client (e.g. Retry-After).
    headers: tuple[tuple[str, str], ...] = ()
    #: Extra members of the JSON deny body (after "error" and "request_id"); never secrets
    #: and never a value the client sent.
    body_fields: tuple[tuple[str, str], ...] = ()
    #: The policy element that raised it (provider, rule, schema location), for explain;
    #: set where it is known, never shown to the client.
    element: str = ""
    #: False for failures monitor mode never lets through (internal, decision log).
    monitorable: bool = True
    #: False for errors monitor mode does not let through before a route is known.
    monitorable_unrouted: bool = True
    #: True for a request no route declares (counted by method and path shape).
    undeclared: bool = False

    def __init_subclass__(cls, reason: Reason | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if reason is not None:
            cls.reason, cls.status = reason.code, reason.status

    def __init__(
        self,
        detail: str = "",
        *,
        reason: Reason | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(detail or (reason.code if reason is not None else self.reason))
        self.detail = detail
        if reason is not None:
            self.reason, self.status = reason.code, reason.status
        if headers:
            self.headers = headers

    def challenge(self, realm: str) -> tuple[tuple[str, str], ...]:
        """Response headers this deny carries (e.g. an RFC 6750 challenge); transport-neutral."""
        return ()


class PolicyError(AuthzError, reason=R.INVALID_POLICY):
    """A policy file (or a document it names) cannot be used.

    ``problems`` holds one ``(location, message)`` pair per problem found, where the
    location is ``file:line:column`` (or ``file`` plus a JSON path when no line is known).
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in problems))


class RequestError(AuthzError, reason=R.BAD_REQUEST):
    pass


class InvalidPath(RequestError, reason=R.INVALID_PATH):
    monitorable_unrouted = False


class AmbiguousRequest(RequestError, reason=R.HOST_AMBIGUOUS):
    """A request two parties could read differently (its Host, its method)."""

    monitorable_unrouted = False


class ContractViolation(RequestError, reason=R.BODY_INVALID):
    """The request does not match its route's contract.

    ``part`` is where the problem is (body, query, path or header) and ``pointer`` a JSON
    pointer into that part (``/items/0/qty``, ``/limit``); both go to the deny body.
    ``detail`` (logs only) says what is wrong, never with the offending value.
    """

    def __init__(
        self, reason: Reason, detail: str = "", *, part: str = "body", pointer: str = ""
    ) -> None:
        fields = (("in", part), ("location", pointer)) if part else ()
        super().__init__(detail or reason.code, reason=reason)
        self.part = part
        self.pointer = pointer
        self.body_fields = fields
        if part:
            self.element = f"{part} {pointer}" if pointer else part


class BodyTooLarge(ContractViolation, reason=R.BODY_TOO_LARGE):
    pass


class UnsupportedMediaType(ContractViolation, reason=R.UNSUPPORTED_MEDIA_TYPE):
    pass


class UnsupportedEncoding(ContractViolation, reason=R.CONTENT_ENCODING_UNSUPPORTED):
    pass


class RouteError(AuthzError, reason=R.UNDECLARED_ROUTE):
    pass


class UndeclaredRoute(RouteError, reason=R.UNDECLARED_ROUTE):
    undeclared = True


class MethodNotAllowed(RouteError, reason=R.METHOD_NOT_ALLOWED):
    pass

    def __init__(self, allowed: tuple[str, ...]) -> None:
        super().__init__("method not allowed")
        self.allowed = allowed

    def challenge(self, realm: str) -> tuple[tuple[str, str], ...]:
        return (("allow", ", ".join(self.allowed)),)


class AuthenticationError(AuthzError, reason=R.INVALID_CREDENTIAL):
    #: The RFC 6750 ``error`` attribute of the challenge; None leaves it out.
    challenge_error: str | None = "invalid_token"

    def challenge(self, realm: str) -> tuple[tuple[str, str], ...]:
        value = f'Bearer realm="{realm}"'
        if self.challenge_error:
            value += f', error="{self.challenge_error}"'
        return (("www-authenticate", value),)


class MissingCredential(AuthenticationError, reason=R.MISSING_CREDENTIAL):
    challenge_error = None
    #: the route takes DPoP-bound tokens (RFC 9449 7.1): (whether Bearer is still
    #: accepted, the proof algorithms); None: a Bearer challenge only
    dpop: tuple[bool, str] | None = None

    def challenge(self, realm: str) -> tuple[tuple[str, str], ...]:
        if self.dpop is None:
            return super().challenge(realm)
        bearer, algs = self.dpop
        value = f'DPoP realm="{realm}", algs="{algs}"'
        if bearer:
            value = f'Bearer realm="{realm}", {value}'
        return (("www-authenticate", value),)


class MultipleCredentials(AuthenticationError, reason=R.MULTIPLE_CREDENTIALS):
    challenge_error = "invalid_request"


class InvalidToken(AuthenticationError, reason=R.TOKEN_INVALID):
    pass


class DpopError(InvalidToken, reason=R.DPOP_PROOF_INVALID):
    """A DPoP proof (or the binding it should prove) fails: the challenge is the
    ``DPoP`` scheme with the algorithms a proof may use (RFC 9449 7.1)."""

    challenge_error = "invalid_dpop_proof"
    algs: str = "ES256"

    def challenge(self, realm: str) -> tuple[tuple[str, str], ...]:
        value = f'DPoP realm="{realm}", error="{self.challenge_error}", algs="{self.algs}"'
        return (("www-authenticate", value),)


class InvalidApiKey(AuthenticationError, reason=R.API_KEY_UNKNOWN):
    pass


class InvalidPeerIdentity(AuthenticationError, reason=R.PEER_IDENTITY_INVALID):
    pass


class AuthorizationError(AuthzError, reason=R.FORBIDDEN):
    pass


class InsufficientScope(AuthorizationError, reason=R.INSUFFICIENT_SCOPE):
    element = "scopes"

    def __init__(self, required: tuple[str, ...]) -> None:
        super().__init__("insufficient scope")
        self.required = required

    def challenge(self, realm: str) -> tuple[tuple[str, str], ...]:
        return (
            (
                "www-authenticate",
                f'Bearer realm="{realm}", error="insufficient_scope", '
                f'scope="{" ".join(self.required)}"',
            ),
        )


class ClaimMismatch(AuthorizationError, reason=R.CLAIM_MISMATCH):
    pass


class SpiffeIdNotAllowed(AuthorizationError, reason=R.SPIFFE_ID_NOT_ALLOWED):
    element = "spiffe_ids"


class RateLimitError(AuthzError, reason=R.RATE_LIMITED):
    pass


class RateLimited(RateLimitError, reason=R.RATE_LIMITED):
    pass


class ConcurrencyLimited(RateLimitError, reason=R.CONCURRENCY_LIMITED):
    pass


class DependencyError(AuthzError, reason=R.DEPENDENCY_UNAVAILABLE):
    pass


class DpopReplayUnavailable(DependencyError, reason=R.DPOP_REPLAY_UNAVAILABLE):
    """The DPoP replay cache cannot say whether a proof is new: refused (fail closed)."""

    headers = (("retry-after", "1"),)


class IntrospectionUnavailable(DependencyError, reason=R.INTROSPECTION_UNAVAILABLE):
    """The introspection endpoint cannot answer: the token is refused (fail closed)."""

    headers = (("retry-after", "1"),)


class RateLimitUnavailable(DependencyError, reason=R.RATE_LIMIT_UNAVAILABLE):
    """The shared rate-limit store cannot be reached and the rule fails closed."""


class DecisionLogUnavailable(DependencyError, reason=R.DECISION_LOG_UNAVAILABLE):
    """The decision log cannot take the record (queue full or writes failing) and the
    policy says ``decision_log.on_failure: deny``: a decision that cannot be recorded is
    not allowed. Never turned into an allow by monitor mode."""

    headers = (("retry-after", "1"),)
    monitorable = False


class AuditUnavailable(DependencyError, reason=R.AUDIT_UNAVAILABLE):
    """The audit trail cannot take the record (:mod:`authz.audit.writer`): a decision that
    cannot be audited is not allowed. Never turned into an allow by monitor mode."""

    headers = (("retry-after", "1"),)
    monitorable = False


class Overloaded(AuthzError, reason=R.OVERLOADED):
    """Shed under overload: the route's priority class is below what is being served."""


class InternalError(AuthzError, reason=R.INTERNAL_ERROR):
    monitorable = False
    monitorable_unrouted = False


class EnforcementError(AuthzError, reason=R.CALLER_BLOCKED):
    """A request refused by an automatic response in force (:mod:`authz.respond`)."""


class CallerBlocked(EnforcementError, reason=R.CALLER_BLOCKED):
    pass


class CredentialRevoked(EnforcementError, reason=R.CREDENTIAL_REVOKED):
    def challenge(self, realm: str) -> tuple[tuple[str, str], ...]:
        return (("www-authenticate", f'Bearer realm="{realm}", error="invalid_token"'),)


class StepUpRequired(EnforcementError, reason=R.STEP_UP_REQUIRED):
    """RFC 9470: the caller must authenticate again, with one of ``acr_values`` (when
    any) and no longer ago than ``max_age`` seconds."""

    def __init__(self, acr_values: tuple[str, ...], max_age: int, detail: str = "") -> None:
        super().__init__(detail or "step-up authentication required")
        self.acr_values = acr_values
        self.max_age = max_age

    def challenge(self, realm: str) -> tuple[tuple[str, str], ...]:
        value = (
            f'Bearer realm="{realm}", error="insufficient_user_authentication", '
            'error_description="A different authentication level is required"'
        )
        if self.acr_values:
            value += f', acr_values="{" ".join(self.acr_values)}"'
        value += f", max_age={self.max_age}"
        return (("www-authenticate", value),)


class CallerThrottled(EnforcementError, reason=R.CALLER_THROTTLED):
    pass


class EnforcementUnavailable(EnforcementError, reason=R.ENFORCEMENT_UNAVAILABLE):
    """The shared block and revocation store is unreachable and the policy says
    ``on_error: deny``."""

    headers = (("retry-after", "1"),)
