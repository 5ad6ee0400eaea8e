"""JSON Web Keys: a JWKS document parsed into key objects, weak keys refused.

:func:`parse_key_set` turns one document into :class:`JwkKey` values and the
:class:`RefusedKey` list of what it would not use: short RSA moduli, small or even
exponents, curves off the allowed list, short HMAC secrets (:class:`KeyRequirements`,
from the provider's config). :class:`~authz.identity.jwks.JwksCache` holds the
parsed keys of one issuer; :func:`algorithm_family` says which key family a JWS
``alg`` needs. No I/O here.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from authz.policy.config import JwtProviderConfig

logger = logging.getLogger("authz.jwks")

#: JWK ``kty`` -> key family, and the family each JWS ``alg`` needs.
KEY_FAMILIES = ("RSA", "EC", "OKP", "oct")
_ALG_FAMILY: dict[str, str] = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC", "ES256K": "EC",
    "EdDSA": "OKP",
    "HS256": "oct", "HS384": "oct", "HS512": "oct",
}  # fmt: skip


def algorithm_family(alg: str) -> str | None:
    """The key family (``RSA``, ``EC``, ``OKP``, ``oct``) a JWS ``alg`` needs, or None."""
    return _ALG_FAMILY.get(alg)


#: The floor for RSA moduli (NIST SP 800-57: 2048 bits); a provider may only raise it.
MIN_RSA_BITS = 2048
#: Smallest RSA public exponent accepted (e=3 invites Bleichenbacher-style forgeries
#: against lax verifiers; every real issuer uses 65537).
MIN_RSA_EXPONENT = 65537
#: EC curves accepted; secp256k1 only when the provider enables ES256K.
EC_CURVES = frozenset({"P-256", "P-384", "P-521"})
_ALG_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "secp256k1"}
#: RFC 7518 3.2: an HMAC key must be at least as long as the hash output.
_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
#: The members that make up a public key (RFC 7638), compared across refreshes.
_KEY_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x"), "oct": ("k",)}


@dataclass(frozen=True, slots=True)
class KeyRequirements:
    """What a JWK's key material must satisfy to be used by one provider."""

    min_rsa_bits: int = MIN_RSA_BITS
    curves: frozenset[str] = EC_CURVES
    #: The HS* algorithms the provider allows; when empty, ``oct`` lengths are not checked.
    hmac_algorithms: tuple[str, ...] = ()

    @classmethod
    def for_provider(cls, config: JwtProviderConfig) -> KeyRequirements:
        """The requirements of ``config`` (its ``min_rsa_bits`` and algorithms)."""
        curves = EC_CURVES | {"secp256k1"} if "ES256K" in config.algorithms else EC_CURVES
        return cls(
            min_rsa_bits=max(MIN_RSA_BITS, config.min_rsa_bits),
            curves=curves,
            hmac_algorithms=tuple(a for a in config.algorithms if a in _HMAC_KEY_BYTES),
        )

    def weakness(self, member: Mapping[str, Any], kty: str, alg: str | None) -> str | None:
        """Why the key in JWK ``member`` is too weak to use, or None.

        Malformed members return None here: the key parser reports them.
        """
        if kty == "RSA":
            n, e = _b64url_int(member.get("n")), _b64url_int(member.get("e"))
            if n is None or e is None:
                return None
            bits = n.bit_length()
            if bits < self.min_rsa_bits:
                return f"RSA modulus of {bits} bits is under the minimum of {self.min_rsa_bits}"
            shown = str(e) if e < 1 << 64 else f"of {e.bit_length()} bits"
            if e % 2 == 0:
                return f"RSA public exponent {shown} is even"
            if e < MIN_RSA_EXPONENT:
                return f"RSA public exponent {shown} is under {MIN_RSA_EXPONENT}"
        elif kty == "EC":
            crv = member.get("crv")
            if crv not in self.curves:
                allowed = ", ".join(sorted(self.curves))
                return f"EC curve {str(crv)[:20]!r} is not allowed (allowed: {allowed})"
            if alg is not None and _ALG_CURVE.get(alg) != crv:
                return f"EC curve {crv} does not fit alg {alg}"
        elif kty == "oct" and self.hmac_algorithms:
            secret = member.get("k")
            if not isinstance(secret, str):
                return None
            algs = (alg,) if alg is not None else self.hmac_algorithms
            # Without its own alg the secret may be used with any allowed HS*.
            need = max(_HMAC_KEY_BYTES.get(a, 0) for a in algs)
            length = len(secret.rstrip("=")) * 6 // 8
            if length < need:
                return (
                    f"HMAC secret of {length} bytes is shorter than the {need} bytes its hash needs"
                )
        return None


def _b64url_int(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big")


@dataclass(frozen=True, slots=True)
class RefusedKey:
    """A JWKS member that was not accepted, and why."""

    where: str  # "<source>: keys[<index>]"
    kid: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class JwkKey:
    """One usable verification key from a JWKS.

    ``key`` is a ``cryptography`` public key object (``bytes`` for ``oct``);
    ``alg`` is the JWK's own ``alg`` member, which, when present, is the only
    algorithm the key may be used with.
    """

    kid: str | None
    key: Any  # a cryptography public key, or bytes for an "oct" key
    family: str
    alg: str | None = None
    #: The JWK's public key members, canonical: the same key has the same material
    #: across refreshes (so cache entries verified with it stay valid).
    material: str = ""

    def compatible(self, alg: str) -> bool:
        """True if a token signed with ``alg`` may be verified with this key."""
        return algorithm_family(alg) == self.family and (self.alg is None or self.alg == alg)


def json_object(data: Any, source: str) -> Mapping[str, Any]:
    """``data`` (bytes or text) parsed as one JSON object, or ValueError naming ``source``."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError, TypeError) as exc:
        raise ValueError(f"{source}: not JSON: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ValueError(f"{source}: not a JSON object")
    return doc


def parse_key_set(
    data: bytes | str | Mapping[str, Any],
    *,
    source: str = "jwks",
    requirements: KeyRequirements | None = None,
) -> tuple[list[JwkKey], list[RefusedKey]]:
    """Parse a JWKS document: the usable verification keys and the keys refused.

    Keys whose ``use`` is not ``sig`` or whose ``key_ops`` exclude ``verify`` are
    skipped silently; keys that cannot be parsed, are too weak for
    ``requirements``, or repeat a kid are refused (and returned, for the caller to
    log). Raises :class:`ValueError` only when the document itself is unusable.
    """
    doc = data if isinstance(data, Mapping) else json_object(data, source)
    members = doc.get("keys")
    if not isinstance(members, list):
        raise ValueError(f"{source}: no 'keys' array")
    need = requirements if requirements is not None else KeyRequirements()
    keys: list[JwkKey] = []
    refused: list[RefusedKey] = []
    seen: set[str] = set()
    for index, member in enumerate(members):
        where = f"{source}: keys[{index}]"
        key = _parse_jwk(member, where, need)
        if key is None:
            continue
        if isinstance(key, RefusedKey):
            refused.append(key)
            continue
        if key.kid is not None:
            if key.kid in seen:
                # An ambiguous kid would make the choice of key depend on order.
                refused.append(RefusedKey(where, key.kid, "duplicate kid skipped"))
                continue
            seen.add(key.kid)
        keys.append(key)
    return keys, refused


def parse_jwks(
    data: bytes | str | Mapping[str, Any],
    *,
    source: str = "jwks",
    requirements: KeyRequirements | None = None,
) -> list[JwkKey]:
    """Parse a JWKS document into usable verification keys, logging each refused key.

    Raises :class:`ValueError` when the document itself is unusable or holds no
    usable key, so that a bad document never replaces good keys.
    """
    keys, refused = parse_key_set(data, source=source, requirements=requirements)
    log_refused(refused)
    if not keys:
        raise ValueError(f"{source}: no usable signing keys")
    return keys


def log_refused(refused: Sequence[RefusedKey], provider: str | None = None) -> None:
    """One warning line per refused key, naming its kid and why."""
    prefix = f"provider {provider}: " if provider else ""
    for r in refused:
        logger.warning("%s%s: key %r refused: %s", prefix, r.where, r.kid, r.reason)


def _parse_jwk(member: Any, where: str, need: KeyRequirements) -> JwkKey | RefusedKey | None:
    if not isinstance(member, dict):
        return RefusedKey(where, None, "not a JSON object")
    use = member.get("use")
    if use is not None and use != "sig":
        return None  # encryption keys are not for us; not worth a warning
    ops = member.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    raw_kid = member.get("kid")
    kid = raw_kid if isinstance(raw_kid, str) else None
    kty = member.get("kty")
    if kty not in KEY_FAMILIES:
        return RefusedKey(where, kid, f"unsupported kty {str(kty)[:20]!r}")
    if raw_kid is not None and kid is None:
        return RefusedKey(where, None, "kid is not a string")
    alg = member.get("alg")
    if alg is not None and (not isinstance(alg, str) or algorithm_family(alg) != kty):
        return RefusedKey(where, kid, f"alg {str(alg)[:20]!r} does not fit kty {kty!r}")
    weakness = need.weakness(member, kty, alg)
    if weakness is not None:
        return RefusedKey(where, kid, weakness)
    try:
        parsed = jwt.PyJWK(member)
    except Exception as exc:  # PyJWT raises several types; none may escape
        return RefusedKey(where, kid, f"unparsable key: {exc}")
    key = parsed.key
    if hasattr(key, "public_key"):
        # A JWKS that leaks a private key is still usable for verification; never
        # keep the private half in memory longer than needed.
        key = key.public_key()
    material = json.dumps(
        [kty, alg, [member.get(m) for m in _KEY_MEMBERS[kty]]], separators=(",", ":")
    )
    return JwkKey(kid=kid, key=key, family=kty, alg=alg, material=material)
