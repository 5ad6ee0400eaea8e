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

import re
import time
from collections import OrderedDict
from types import MappingProxyType
from typing import Any, NoReturn

from jwt.algorithms import Algorithm, get_default_algorithms

from authz import reasons as R
from authz.errors import InvalidToken, MultipleCredentials
from authz.identity import claims as C
from authz.identity.base import WAIT, Answer, Clock, Fetcher
from authz.identity.bearer import (
    BEARER,
    BEARER_OR_DPOP,
    bearer_presented,
    parse_authorization,
    query_has_access_token,
)
from authz.identity.dpop import MemoryReplayCache, ProofChecker, ReplayCache, request_url
from authz.identity.jose import b64decode, json_object
from authz.identity.jwk import JwkKey, algorithm_family
from authz.identity.jwks import JwksCache
from authz.identity.sender import check_certificate_binding, confirmation
from authz.model import Identity, Request
from authz.policy.config import JwtProviderConfig
from authz.reasons import Reason
from authz.telemetry.metrics import MemoryMetrics, Metrics, report_table

#: Longest token looked at; real tokens are far smaller, and this bounds the work
#: (and cache memory) an attacker can cause per request.
MAX_TOKEN_LENGTH = 16 * 1024

#: Header parameters that would make us fetch or trust key material named by the
#: token itself, or that demand extensions we do not implement (RFC 7515 4.1.11).
FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})

# Compact JWS: three base64url segments. The signature may be empty so that an
# unsigned ("alg": "none") token is reported as a forbidden algorithm, not as garbage.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def _fail(reason: Reason, detail: str) -> NoReturn:
    raise InvalidToken(detail, reason=reason)


class _Verified:
    """A cache entry: what verifying a token proved, and with which key."""

    __slots__ = ("deadline", "generation", "identity", "jkt", "key", "valid_until", "x5t")

    def __init__(
        self,
        identity: Identity,
        valid_until: float,
        key: JwkKey,
        jwks: JwksCache,
        cnf: tuple[str | None, str | None] = (None, None),
    ):
        self.identity = identity
        self.valid_until = valid_until  # exp + leeway
        self.key = key
        self.x5t, self.jkt = cnf  # what the token is bound to (RFC 8705 / RFC 9449)
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
        replay: ReplayCache | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._clock = clock
        m = metrics if metrics is not None else MemoryMetrics()
        self.jwks = JwksCache(config, clock=clock, fetcher=fetcher, metrics=m)
        self._header = config.header.lower()
        self._dedicated = self._header != "authorization"
        self._carrier = "header:" + self._header
        self._schemes = BEARER_OR_DPOP if config.dpop is not None else BEARER
        self._dpop_required = config.dpop is not None and config.dpop.mode == "required"
        self.proofs: ProofChecker | None = None
        if config.dpop is not None:
            cache = replay or MemoryReplayCache(config.dpop.replay_cache_size)
            self.proofs = ProofChecker(config.dpop, cache, clock=clock)
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
        report_table(m, f"jwt_cache:{config.name}", self._cache.__len__, self._cache_size)

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
        """Stop background key refreshes (and close a shared DPoP replay cache)."""
        await self.jwks.aclose()
        close = getattr(self.proofs.replay, "aclose", None) if self.proofs else None
        if close is not None:
            await close()

    def presented(self, request: Request) -> str | None:
        """Where a bearer token is: this provider's header, or an ``access_token``
        query parameter (never accepted, but a credential the client sent: counted so
        that it cannot ride along unverified beside another one)."""
        value = request.headers.get(self._header)
        if value is not None and bearer_presented(
            value, dedicated=self._dedicated, schemes=self._schemes
        ):
            return self._carrier
        path = request.path
        if "?" in path and query_has_access_token(path):
            return "query:access_token"
        return None

    async def authenticate(self, request: Request) -> Identity | None:
        """The identity a bearer (or DPoP) JWT proves; None when no token is present."""
        found = self.authenticate_now(request)
        if found is not WAIT:
            return found
        # not cached, or bound to a DPoP key (the proof needs the replay cache): the
        # header is read again, which is nothing beside a verification
        value = request.headers[self._header]
        token = parse_authorization(value, dedicated=self._dedicated, schemes=self._schemes)
        if token is None:  # pragma: no cover - authenticate_now found one
            return None
        verified = self._cached(token)
        if verified is None:
            verified = await self._verify(token)
            if self._cache_size:
                cache = self._cache
                cache[token] = verified
                while len(cache) > self._cache_size:
                    cache.popitem(last=False)
        if self._bound(request, verified, value) and self.proofs is not None:
            proof = request.headers.get("dpop")
            if proof is None:
                self.proofs.fail(R.DPOP_PROOF_INVALID, "DPoP scheme without a DPoP proof")
            assert verified.jkt is not None
            url = request_url(request.scheme, request.host, request.path)
            await self.proofs.check(proof, request.method, url, token, verified.jkt)
        return verified.identity

    def authenticate_now(self, request: Request) -> Answer:
        """The identity of a cached token, None without a bearer token, else WAIT (the
        token must be verified, or its DPoP proof checked: :meth:`authenticate`). Raises
        what authenticate would for a malformed header, a second token in the query or
        a token bound to another certificate."""
        value = request.headers.get(self._header)
        if value is None:
            return None
        token = parse_authorization(value, dedicated=self._dedicated, schemes=self._schemes)
        if token is None:
            return None
        path = request.path
        if "?" in path and query_has_access_token(path):
            raise MultipleCredentials("token in both the header and the query")
        entry = self._cached(token)
        if entry is None:
            return WAIT
        if self._bound(request, entry, value):
            return WAIT  # a DPoP proof to check
        return entry.identity

    def _cached(self, token: str) -> _Verified | None:
        entry = self._cache.get(token)
        if entry is None:
            return None
        now = self._clock()
        jwks = self.jwks
        if now < entry.deadline and entry.generation == jwks.generation:
            self._cache.move_to_end(token)
            self._cache_hit.inc()
            return entry
        if now < entry.valid_until and now < jwks.usable_until and jwks.holds(entry.key):
            # Refreshed or rotated since, and the key is still served (O(1)).
            entry.bind(jwks)
            self._cache.move_to_end(token)
            self._cache_hit.inc()
            return entry
        # Expired, keys stale, or its key rotated out or revoked: verify again,
        # which gives the reason (token_expired, jwks_unavailable, token_unknown_kid).
        del self._cache[token]
        return None

    def _bound(self, request: Request, entry: _Verified, value: str) -> bool:
        """Check what the token is bound to, on every request (cache hits too): the
        client certificate (RFC 8705) now; True when a DPoP proof must be checked."""
        if entry.x5t is not None:
            check_certificate_binding(entry.x5t, request.peer_certificate)
        dpop = value.lstrip()[:4].lower() == "dpop"  # the scheme parse_authorization read
        if dpop:
            if entry.jkt is None:
                self._refuse(R.DPOP_KEY_MISMATCH, "DPoP scheme with a token not bound to a key")
            return True
        if entry.jkt is not None:
            # RFC 9449 7.2: a DPoP-bound token must not be accepted as a bearer token.
            self._refuse(R.DPOP_KEY_MISMATCH, "a DPoP-bound token under the Bearer scheme")
        if self._dpop_required:
            self._refuse(R.TOKEN_NOT_SENDER_CONSTRAINED, "the provider requires DPoP")
        return False

    def _refuse(self, reason: Reason, detail: str) -> NoReturn:
        if self.proofs is not None:
            self.proofs.fail(reason, detail, "invalid_token")
        _fail(reason, detail)

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
        header = json_object(header_b64, "header")
        payload = json_object(payload_b64, "payload")
        signature = b64decode(signature_b64, "signature")

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
        return _Verified(identity, valid_until, jwk, self.jwks, confirmation(payload))

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
