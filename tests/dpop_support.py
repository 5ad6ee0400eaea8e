"""Minting DPoP proofs (RFC 9449) and sender-bound tokens for tests."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any

import jwt

from authz.devissuer import DevKey
from authz.identity.dpop import jwk_thumbprint


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jkt(key: DevKey) -> str:
    """The RFC 7638 thumbprint of ``key``'s public JWK (a token's ``cnf.jkt``)."""
    return jwk_thumbprint(public_jwk(key))


def public_jwk(key: DevKey) -> dict[str, Any]:
    return {k: v for k, v in key.public_jwk().items() if k not in ("kid", "alg", "use")}


def x5t(cert_pem: str) -> str:
    """base64url(SHA-256(DER)) of a PEM certificate (a token's ``cnf.x5t#S256``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    return b64url(hashlib.sha256(der).digest())


def proof(
    key: DevKey,
    method: str,
    url: str,
    token: str | None,
    *,
    iat: float | None = None,
    jti: str | None = None,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A DPoP proof for ``method`` ``url`` bound to ``token`` (its ``ath``)."""
    payload: dict[str, Any] = {
        "jti": secrets.token_urlsafe(12) if jti is None else jti,
        "htm": method,
        "htu": url,
        "iat": int(time.time() if iat is None else iat),
    }
    if not jti and jti is not None:
        del payload["jti"]  # jti="" leaves it out
    if token is not None:
        payload["ath"] = b64url(hashlib.sha256(token.encode()).digest())
    for k, v in claims.items():
        if v is None:
            payload.pop(k, None)
        else:
            payload[k] = v
    header: dict[str, Any] = {"typ": "dpop+jwt", "jwk": public_jwk(key)}
    header.update(headers or {})
    return jwt.encode(payload, key.private_key, algorithm=key.alg, headers=header)
