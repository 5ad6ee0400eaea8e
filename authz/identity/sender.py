"""Sender-constrained tokens: what a token's ``cnf`` claim binds it to, and the
RFC 8705 check of a certificate-bound token against the client certificate Envoy
verified.

The certificate is the one Envoy includes with every check: on the gRPC transport
``attributes.source.certificate`` (``include_peer_certificate``), on the HTTP
transport the ``x-authz-peer-certificate`` header the generated config sets to
``%DOWNSTREAM_PEER_CERT%``; both are the URL-encoded PEM of the leaf, and
:attr:`authz.model.Request.peer_certificate` holds it. Its thumbprint is
base64url(SHA-256(DER)) (RFC 8705 3.1): one base64 decode and one hash, no X.509
parse. Pure functions; failures are :class:`~authz.errors.InvalidToken`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from typing import Any, NoReturn
from urllib.parse import unquote

from authz import reasons as R
from authz.errors import InvalidToken
from authz.reasons import Reason

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
#: The longest thumbprint or jkt looked at (a SHA-256 in base64url is 43 characters).
_MAX_THUMBPRINT = 128


def _fail(reason: Reason, detail: str) -> NoReturn:
    raise InvalidToken(detail, reason=reason)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def confirmation(payload: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(x5t#S256, jkt)`` of the token's ``cnf`` claim (RFC 7800), each None if absent."""
    cnf = payload.get("cnf")
    if cnf is None:
        return None, None
    if not isinstance(cnf, dict):
        _fail(R.TOKEN_CLAIM_TYPE, "claim cnf is not an object")
    x5t = cnf.get("x5t#S256")
    jkt = cnf.get("jkt")
    for name, value in (("x5t#S256", x5t), ("jkt", jkt)):
        if value is not None and (
            not isinstance(value, str) or not value or len(value) > _MAX_THUMBPRINT
        ):
            _fail(R.TOKEN_CLAIM_TYPE, f"cnf.{name} is not a thumbprint string")
    return x5t, jkt


@functools.lru_cache(maxsize=1024)
def certificate_thumbprint(peer_certificate: str) -> str | None:
    """base64url(SHA-256(DER)) of the first certificate in the URL-encoded PEM, None
    when there is none (no client certificate, or not PEM). Memoised (bounded): a
    client sends its certificate with every request of a connection."""
    if not peer_certificate:
        return None
    pem = unquote(peer_certificate) if "%" in peer_certificate else peer_certificate
    start = pem.find(_BEGIN)
    if start < 0:
        return None
    end = pem.find(_END, start)
    if end < 0:
        return None
    body = "".join(pem[start + len(_BEGIN) : end].split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    return b64url(hashlib.sha256(der).digest())


def check_certificate_binding(x5t: str, peer_certificate: str) -> None:
    """Refuse unless the verified client certificate has thumbprint ``x5t`` (RFC 8705 3)."""
    actual = certificate_thumbprint(peer_certificate)
    if actual is None:
        _fail(R.TOKEN_CERTIFICATE_MISMATCH, "certificate-bound token without a client certificate")
    if not hmac.compare_digest(actual.encode(), x5t.encode("utf-8", "replace")):
        _fail(R.TOKEN_CERTIFICATE_MISMATCH, "the client certificate is not the token's")
