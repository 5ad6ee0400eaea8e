"""RFC 9449 DPoP proofs: verify one against the request and the access token, and
refuse a ``jti`` seen before within the window.

A proof is a compact JWS whose header carries the public key that signed it
(``jwk``). Checked, in this order, each failure a :class:`~authz.errors.DpopError`:
one proof (a ``,`` in the header is two), compact form and size, strict JSON (the
reader of :mod:`authz.strictjson`), ``typ: dpop+jwt``, an asymmetric ``alg`` from
the provider's list, a public ``jwk`` of the right family and strength (the JWKS
rules of :mod:`authz.identity.jwk`), the signature, ``htm`` equal to the request's
method, ``htu`` equal to the request's URL without query and fragment (both
normalised: RFC 3986 6.2.2 case, percent-encoding, default port, empty path),
``iat`` within ``[now - window, now + leeway]``, ``ath`` equal to
base64url(SHA-256(token)), the key's RFC 7638 thumbprint equal to the token's
``cnf.jkt`` (``dpop_key_mismatch``), and last the ``jti`` unused
(``dpop_proof_replayed``); only a proof that passed everything else is remembered.

The replay cache is a :class:`ReplayCache`: :class:`MemoryReplayCache` (bounded;
full of live proofs it refuses, ``dpop_replay_unavailable`` 503) or
:class:`RedisReplayCache` (``SET NX PX`` on the policy's Redis store, shared by
every process; down means 503, never a proof let through unchecked).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit

from jwt.algorithms import get_default_algorithms

from authz import reasons as R
from authz import strictjson
from authz.errors import DpopError, DpopReplayUnavailable, InvalidToken
from authz.identity.jwk import KeyRequirements, algorithm_family
from authz.identity.sender import b64url
from authz.policy.config import DpopConfig
from authz.reasons import Reason

MAX_PROOF_LENGTH = 8 * 1024
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x"),
}  # fmt: skip
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_DEFAULT_PORT = {"http": 80, "https": 443}
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: base64url(SHA-256) of the required members, sorted, no whitespace."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _pct(match: re.Match[str]) -> str:
    char = chr(int(match.group(0)[1:], 16))
    return char if char in _UNRESERVED else match.group(0).upper()


def normalise_url(url: str) -> str | None:
    """``scheme://host[:port]/path`` without query and fragment, RFC 3986 6.2.2
    normalised (lower-case scheme and host, default port dropped, empty path ``/``,
    percent-encoding upper-case and unreserved characters decoded); None if not a URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORT or not host or parts.username is not None:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORT[scheme] else f"{host}:{port}"
    path = _PCT.sub(_pct, parts.path) if "%" in parts.path else parts.path
    return f"{scheme}://{netloc}{path or '/'}"


def _same_url(htu: str, url: str) -> bool:
    """``htu`` names ``url``. The generated Envoy config strips the port from the
    authority before the service sees it (it routes on the host alone), so when the
    request's URL has no port, the port of ``htu`` is not compared either."""
    want = normalise_url(url)
    got = normalise_url(htu)
    if want is None or got is None:
        return False
    if got == want:
        return True
    scheme, _, rest = got.partition("://")
    netloc, slash, path = rest.partition("/")
    if netloc.endswith("]") or ":" not in netloc:
        return False
    return f"{scheme}://{netloc.rpartition(':')[0]}{slash}{path}" == want


class ReplayCache(Protocol):
    async def first_use(self, key: str, until: float, now: float) -> bool:
        """Remember ``key`` until ``until``; False if it was already there. Raises
        DpopReplayUnavailable when it cannot tell."""


class MemoryReplayCache:
    """``jti`` keys of this process, each until its proof leaves the window; bounded."""

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._seen: OrderedDict[str, float] = OrderedDict()  # insertion ~ expiry order

    def __len__(self) -> int:
        return len(self._seen)

    async def first_use(self, key: str, until: float, now: float) -> bool:
        return self.first_use_now(key, until, now)

    def first_use_now(self, key: str, until: float, now: float) -> bool:
        seen = self._seen
        expiry = seen.get(key)
        if expiry is not None and expiry > now:
            return False
        while seen:  # drop what left the window (oldest first)
            oldest, its = next(iter(seen.items()))
            if its > now:
                break
            del seen[oldest]
        if len(seen) >= self._size:
            # Evicting a live proof would let it be replayed: refuse instead.
            raise DpopReplayUnavailable("the DPoP replay cache is full of live proofs")
        seen[key] = until
        return True


class ProofChecker:
    """Verifies DPoP proofs for one provider (see the module docstring)."""

    def __init__(self, config: DpopConfig, replay: ReplayCache, *, clock: Any = time.time) -> None:
        self.config = config
        self.replay = replay
        self._clock = clock
        available = get_default_algorithms()
        self._algorithms = {
            a: available[a]
            for a in config.algorithms
            if a in available and algorithm_family(a) in ("RSA", "EC", "OKP")
        }
        self.algs = " ".join(self._algorithms)
        self._need = KeyRequirements()

    def fail(self, reason: Reason, detail: str, error: str = "invalid_dpop_proof") -> NoReturn:
        exc = DpopError(detail, reason=reason)
        exc.challenge_error = error
        exc.algs = self.algs
        raise exc

    async def check(self, proof: str, method: str, url: str, token: str, jkt: str) -> None:
        """Verify ``proof`` for ``method`` ``url`` and ``token`` bound to key ``jkt``."""
        key_thumbprint, jti, iat = self._verify(proof, method, url, token)
        if not hmac.compare_digest(key_thumbprint.encode(), jkt.encode("utf-8", "replace")):
            self.fail(R.DPOP_KEY_MISMATCH, "the proof's key is not the token's", "invalid_token")
        now = self._clock()
        until = iat + self.config.iat_window + self.config.leeway
        if not await self.replay.first_use(f"{key_thumbprint}:{jti}", max(until, now + 1), now):
            self.fail(R.DPOP_PROOF_REPLAYED, "the proof's jti was used before")

    def _verify(self, proof: str, method: str, url: str, token: str) -> tuple[str, str, float]:
        bad = R.DPOP_PROOF_INVALID
        if "," in proof or len(proof) > MAX_PROOF_LENGTH or not _COMPACT.fullmatch(proof.strip()):
            self.fail(bad, "not one compact JWS")
        proof = proof.strip()
        h64, p64, s64 = proof.split(".")
        try:
            header = _object(h64)
            payload = _object(p64)
            signature = _decode(s64)
        except strictjson.DuplicateMember:
            self.fail(bad, "a member named twice")
        except (ValueError, RecursionError, InvalidToken):
            self.fail(bad, "not base64url JSON objects")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ("dpop+jwt", "application/dpop+jwt"):
            self.fail(bad, "typ is not dpop+jwt")
        alg = header.get("alg")
        algorithm = self._algorithms.get(alg) if isinstance(alg, str) else None
        if algorithm is None:
            self.fail(bad, "alg not allowed for proofs (asymmetric only)")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict) or jwk.get("kty") != algorithm_family(str(alg)):
            self.fail(bad, "no public jwk of the alg's family")
        if not _PRIVATE_MEMBERS.isdisjoint(jwk):
            self.fail(bad, "the jwk holds private key material")
        if self._need.weakness(jwk, jwk["kty"], alg) is not None:
            self.fail(bad, "the jwk is too weak")
        try:
            key, thumbprint = _public_key(str(alg), json.dumps(jwk, sort_keys=True))
        except Exception:  # PyJWT InvalidKeyError, KeyError, bad curve
            self.fail(bad, "the jwk is not a usable public key")
        signing_input = proof[: len(h64) + 1 + len(p64)].encode("ascii")
        try:
            valid = algorithm.verify(signing_input, key, signature)
        except Exception:
            valid = False
        if not valid:
            self.fail(bad, "signature verification failed")
        jti = payload.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= 256:
            self.fail(bad, "jti missing")
        if payload.get("htm") != method:
            self.fail(bad, "htm is not the request's method")
        htu = payload.get("htu")
        if not isinstance(htu, str) or not _same_url(htu, url):
            self.fail(bad, "htu is not the request's URL")
        iat = payload.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            self.fail(bad, "iat is not a number")
        now = self._clock()
        if not now - self.config.iat_window <= iat <= now + self.config.leeway:
            self.fail(bad, "iat outside the window")
        ath = payload.get("ath")
        expected = b64url(hashlib.sha256(token.encode("ascii", "replace")).digest())
        if not isinstance(ath, str) or not hmac.compare_digest(ath.encode(), expected.encode()):
            self.fail(bad, "ath is not the token's hash")
        return thumbprint, jti, float(iat)


@functools.lru_cache(maxsize=1024)
def _public_key(alg: str, jwk_json: str) -> tuple[Any, str]:
    """The key object and RFC 7638 thumbprint of a proof's jwk (memoised, bounded: a
    client signs every proof with the same key; loading it costs more than verifying)."""
    jwk = json.loads(jwk_json)
    return get_default_algorithms()[alg].from_jwk(jwk), jwk_thumbprint(jwk)


def _decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _object(segment: str) -> dict[str, Any]:
    value = strictjson.loads(_decode(segment))
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def request_url(scheme: str, host: str, path: str) -> str:
    """The request's URL as a DPoP ``htu`` names it (no query, no fragment)."""
    return f"{scheme or 'http'}://{host}{path.partition('?')[0].partition('#')[0]}"
