"""JWT bearer tokens from one OIDC/JWT issuer (identity provider kind ``jwt``).

The hot path is a verified-token cache: a token seen before costs one dict lookup
and a few comparisons (its expiry, the key set's staleness and generation), and is
answered without a coroutine (``authenticate_now``). An
entry never outlives its key: it remembers the key object it was verified with and
answers only while that key is still served and not stale. On a miss the token is
parsed exactly once (one split, one base64url decode and one JSON parse per
segment), the header is checked before any key is looked up, the signature is
verified with PyJWT's algorithm objects on the already-decoded bytes, and the
registered claims are checked here. Every failure is an
:class:`~authz.errors.InvalidToken` with a stable ``reason``; no PyJWT exception
leaves this module.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections import OrderedDict
from types import MappingProxyType
from typing import Any, NoReturn

from jwt.algorithms import Algorithm, get_default_algorithms

from authz import reasons as R
from authz import strictjson
from authz.errors import InvalidToken, MultipleCredentials
from authz.identity import claims as C
from authz.identity.base import WAIT, Answer, Clock, Fetcher
from authz.identity.bearer import bearer_presented, parse_authorization, query_has_access_token
from authz.identity.jwk import JwkKey, algorithm_family
from authz.identity.jwks import JwksCache
from authz.model import Identity, Request
from authz.policy.config import JwtProviderConfig
from authz.reasons import Reason
from authz.telemetry.metrics import MemoryMetrics, Metrics

#: Longest token looked at; real tokens are far smaller, and this bounds the work
#: (and cache memory) an attacker can cause per request.
MAX_TOKEN_LENGTH = 16 * 1024

#: Header parameters that would make us fetch or trust key material named by the
#: token itself, or that demand extensions we do not implement (RFC 7515 4.1.11).
FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})

# Compact JWS: three base64url segments. The signature may be empty so that an
# unsigned ("alg": "none") token is reported as a forbidden algorithm, not as garbage.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64_INDEX = {c: i for i, c in enumerate(_B64URL_ALPHABET)}


def _fail(reason: Reason, detail: str) -> NoReturn:
    raise InvalidToken(detail, reason=reason)


def _b64decode(segment: str, name: str) -> bytes:
    rem = len(segment) % 4
    if rem == 1:
        _fail(R.TOKEN_MALFORMED, f"bad base64url length in {name}")
    if rem:
        # Unused low bits of the last character must be zero, else several strings
        # would decode to the same bytes (a cache key and a token id would differ).
        mask = 0x0F if rem == 2 else 0x03
        if _B64_INDEX[segment[-1]] & mask:
            _fail(R.TOKEN_MALFORMED, f"non-canonical base64url in {name}")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        _fail(R.TOKEN_MALFORMED, f"bad base64url in {name}")


def _json_object(segment: str, name: str) -> dict[str, Any]:
    raw = _b64decode(segment, name)
    try:
        value = strictjson.loads(raw)
    except strictjson.DuplicateMember:
        _fail(R.TOKEN_DUPLICATE_MEMBER, f"{name} names a member twice")
    except (ValueError, RecursionError):
        _fail(R.TOKEN_MALFORMED, f"{name} is not JSON")
    if not isinstance(value, dict):
        _fail(R.TOKEN_MALFORMED, f"{name} is not a JSON object")
    if b"\\u" in raw and _LONE_SURROGATE.search(raw) and not _encodable(value):
        # JSON may escape a lone UTF-16 surrogate ("\ud800"); no UTF-8 text holds one,
        # so a claim with it could not be put in a header, a log line or a sketch.
        _fail(R.TOKEN_MALFORMED, f"{name} holds a lone surrogate")
    return value


#: A \u escape of a UTF-16 surrogate (a pair is fine, and json joins it): the cheap
#: pre-check before the whole value is walked.
_LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodable(value: Any) -> bool:
    """True if every string in ``value`` (keys included) is valid Unicode text."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Verified:
    """A cache entry: what verifying a token proved, and with which key."""

    __slots__ = ("deadline", "generation", "identity", "key", "valid_until")

    def __init__(self, identity: Identity, valid_until: float, key: JwkKey, jwks: JwksCache):
        self.identity = identity
        self.valid_until = valid_until  # exp + leeway
        self.key = key
        self.generation = 0
        self.deadline = 0.0
        self.bind(jwks)

    def bind(self, jwks: JwksCache) -> None:
        """Note that ``jwks`` holds :attr:`key` now: the fast path may answer until
        the token expires or the keys go stale, whichever is first, while the key
        set stays the same."""
        self.generation = jwks.generation
        self.deadline = min(self.valid_until, jwks.usable_until)


class JwtProvider:
    """Verifies ``Bearer`` JWTs from one issuer; implements ``IdentityProvider``.

    ``verifications`` and ``cache_hits`` read its counters in the metrics.
    """

    kind = "jwt"
    connection_credential = False

    def __init__(
        self,
        config: JwtProviderConfig,
        *,
        clock: Clock = time.time,
        fetcher: Fetcher | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._clock = clock
        m = metrics if metrics is not None else MemoryMetrics()
        self.jwks = JwksCache(config, clock=clock, fetcher=fetcher, metrics=m)
        self._header = config.header.lower()
        self._dedicated = self._header != "authorization"
        self._carrier = "header:" + self._header
        self._audiences = frozenset(config.audiences)
        self._typ = C.accepted_typ(config.typ)
        available = get_default_algorithms()
        # "none" is never an algorithm, whatever the configuration says.
        self._algorithms: dict[str, Algorithm] = {
            alg: available[alg]
            for alg in config.algorithms
            if alg.lower() != "none" and alg in available and algorithm_family(alg)
        }
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._cache_size = max(0, config.cache_size)
        by = ("provider",)
        self._verified = m.counter(
            "authz_jwt_verifications_total", "JWTs verified (signature and claims)", by
        ).labels(config.name)
        self._cache_hit = m.counter(
            "authz_jwt_cache_hits_total", "JWTs answered from the verified-token cache", by
        ).labels(config.name)

    @property
    def verifications(self) -> int:
        """JWTs verified in full (from the metrics, per provider name)."""
        return int(getattr(self._verified, "value", 0))

    @property
    def cache_hits(self) -> int:
        """JWTs answered from the cache (from the metrics, per provider name)."""
        return int(getattr(self._cache_hit, "value", 0))

    @property
    def cached(self) -> int:
        """Number of verified tokens currently cached."""
        return len(self._cache)

    async def start(self) -> None:
        """Load the issuer's keys (see :meth:`JwksCache.start`)."""
        await self.jwks.start()

    def ready(self) -> bool:
        """True once the issuer's keys are loaded and not stale."""
        return self.jwks.ready()

    async def aclose(self) -> None:
        """Stop background key refreshes."""
        await self.jwks.aclose()

    def presented(self, request: Request) -> str | None:
        """Where a bearer token is: this provider's header, or an ``access_token``
        query parameter (never accepted, but a credential the client sent: counted so
        that it cannot ride along unverified beside another one)."""
        value = request.headers.get(self._header)
        if value is not None and bearer_presented(value, dedicated=self._dedicated):
            return self._carrier
        path = request.path
        if "?" in path and query_has_access_token(path):
            return "query:access_token"
        return None

    async def authenticate(self, request: Request) -> Identity | None:
        """The identity a bearer JWT proves; None when no bearer token is present."""
        found = self.authenticate_now(request)
        if found is not WAIT:
            return found
        # not cached (or no longer usable, and dropped): the header is read again,
        # which is nothing beside a verification
        token = parse_authorization(request.headers[self._header], dedicated=self._dedicated)
        if token is None:  # pragma: no cover - authenticate_now found one
            return None
        verified = await self._verify(token)
        if self._cache_size:
            cache = self._cache
            cache[token] = verified
            while len(cache) > self._cache_size:
                cache.popitem(last=False)
        return verified.identity

    def authenticate_now(self, request: Request) -> Answer:
        """The identity of a cached token, None without a bearer token, else WAIT (the
        token must be verified: :meth:`authenticate`). Raises what authenticate would
        for a malformed header or a second token in the query."""
        value = request.headers.get(self._header)
        if value is None:
            return None
        token = parse_authorization(value, dedicated=self._dedicated)
        if token is None:
            return None
        path = request.path
        if "?" in path and query_has_access_token(path):
            raise MultipleCredentials("token in both the header and the query")

        entry = self._cache.get(token)
        if entry is not None:
            now = self._clock()
            jwks = self.jwks
            if now < entry.deadline and entry.generation == jwks.generation:
                self._cache.move_to_end(token)
                self._cache_hit.inc()
                return entry.identity
            if now < entry.valid_until and now < jwks.usable_until and jwks.holds(entry.key):
                # Refreshed or rotated since, and the key is still served (O(1)).
                entry.bind(jwks)
                self._cache.move_to_end(token)
                self._cache_hit.inc()
                return entry.identity
            # Expired, keys stale, or its key rotated out or revoked: verify again,
            # which gives the reason (token_expired, jwks_unavailable, token_unknown_kid).
            del self._cache[token]
        return WAIT

    async def verify(self, token: str) -> tuple[Identity, float]:
        """Verify ``token`` fully (no cache); the identity and the time it stops being valid.

        Raises :class:`InvalidToken` with one of the ``token_*`` reasons, or
        ``DependencyError(reason=R.JWKS_UNAVAILABLE)`` from the key set.
        """
        verified = await self._verify(token)
        return verified.identity, verified.valid_until

    async def _verify(self, token: str) -> _Verified:
        self._verified.inc()
        if len(token) > MAX_TOKEN_LENGTH:
            _fail(R.TOKEN_MALFORMED, "token too long")
        if _COMPACT.fullmatch(token) is None:
            _fail(R.TOKEN_MALFORMED, "not a compact JWS (three base64url parts)")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(header_b64, "header")
        payload = _json_object(payload_b64, "payload")
        signature = _b64decode(signature_b64, "signature")

        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            _fail(R.TOKEN_ALGORITHM_NOT_ALLOWED, "alg missing")
        algorithm = self._algorithms.get(alg)
        if algorithm is None:
            _fail(R.TOKEN_ALGORITHM_NOT_ALLOWED, f"alg {alg[:20]!r} not allowed")
        forbidden = FORBIDDEN_HEADERS.intersection(header)
        if forbidden:
            _fail(R.TOKEN_HEADER_FORBIDDEN, f"header {sorted(forbidden)[0]!r} not accepted")
        C.check_typ(header, self._typ)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            _fail(R.TOKEN_MALFORMED, "kid is not a string")
        if algorithm_family(alg) == "oct" and not any(k.family == "oct" for k in self.jwks.keys):
            # An HMAC token for an issuer with only asymmetric keys is the classic key
            # confusion attempt; refuse it before it can trigger an unknown-kid refresh.
            _fail(R.TOKEN_ALGORITHM_NOT_ALLOWED, f"alg {alg} but the issuer has no HMAC keys")

        jwk = await self.jwks.key_for(kid, alg)
        # No await from here on: the key set cannot change before the entry is made.
        # Key confusion: an HS* token must never be checked with an RSA/EC key used
        # as an HMAC secret, nor an RS token with a PS-only key and so on.
        if not jwk.compatible(alg):
            _fail(R.TOKEN_ALGORITHM_NOT_ALLOWED, f"alg {alg} does not fit key {kid!r}")
        try:
            key = algorithm.prepare_key(jwk.key)
        except Exception:  # PyJWT InvalidKeyError/TypeError: e.g. ES384 with a P-256 key
            _fail(R.TOKEN_ALGORITHM_NOT_ALLOWED, f"alg {alg} does not fit key {kid!r}")
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
        try:
            valid = algorithm.verify(signing_input, key, signature)
        except Exception:  # malformed signature encodings raise in some algorithms
            valid = False
        if not valid:
            _fail(R.TOKEN_BAD_SIGNATURE, "signature verification failed")
        identity, valid_until = self._check_claims(payload)
        return _Verified(identity, valid_until, jwk, self.jwks)

    def _check_claims(self, payload: dict[str, Any]) -> tuple[Identity, float]:
        config = self.config
        if C.string(payload, "iss") != config.issuer:
            _fail(R.TOKEN_WRONG_ISSUER, "issuer does not match")
        if self._audiences.isdisjoint(C.audiences(payload)):
            _fail(R.TOKEN_WRONG_AUDIENCE, "audience not accepted")
        C.check_access_payload(payload)

        now = self._clock()
        leeway = config.leeway
        exp = C.number(payload, "exp")
        if exp is None:
            _fail(R.TOKEN_MISSING_EXP, "exp missing")
        if now >= exp + leeway:
            _fail(R.TOKEN_EXPIRED, "token expired")
        nbf = C.number(payload, "nbf")
        if nbf is not None and nbf > now + leeway:
            _fail(R.TOKEN_NOT_YET_VALID, "nbf in the future")
        iat = C.number(payload, "iat")
        if iat is not None and iat > now + leeway:
            _fail(R.TOKEN_NOT_YET_VALID, "iat in the future")
        start = iat if iat is not None else nbf if nbf is not None else now
        if exp - start > config.max_lifetime + leeway:
            _fail(R.TOKEN_LIFETIME_TOO_LONG, "token lifetime exceeds the maximum")

        sub = C.string(payload, "sub")
        if not sub:
            _fail(R.TOKEN_MISSING_SUBJECT, "sub missing")
        C.string(payload, "jti")
        identity = Identity(
            kind="jwt",
            subject=sub,
            provider=config.name,
            issuer=config.issuer,
            scopes=C.scopes(payload, config.scope_claim),
            claims=MappingProxyType(payload),
            expires_at=exp,
        )
        return identity, exp + leeway
