"""What an enforcement applies to, and how a request is matched against it.

Targets are plain strings, normalised once when an entry is made (an operator's
input, a detector's action) so that the request path matches them with one dict
lookup each:

- ``address``: an IP address in its canonical text (IPv4-mapped IPv6 as IPv4);
- ``prefix``: the address's /24 (IPv4) or /64 (IPv6) network, ``10.1.2.0/24``,
  ``2001:db8:1:2::/64`` (the only lengths: one lookup each per request);
- ``subject``: the verified subject or SPIFFE ID, as the identity carries it;
- ``api_key``: the key's id in the policy, or its digest (the first 16 hex digits
  of its SHA-256, as :func:`authz.detect.events.credential_digest` makes it);
- ``token``: the JWT's ``jti``, or the digest of its ``header.payload`` when it has
  none (:func:`token_id`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from functools import lru_cache

from authz.detect.events import TARGET_KINDS, credential_digest, token_part
from authz.model import Identity, Request

#: The prefix lengths a block may name (one lookup each per request).
IPV4_PREFIX = 24
IPV6_PREFIX = 64


class TargetError(ValueError):
    """A target that is not one of its kind (the control plane answers INVALID_ARGUMENT)."""


@lru_cache(maxsize=8192)
def address_and_prefix(address: str) -> tuple[str, str]:
    """(canonical address, its /24 or /64) of a client address; ("", "") if it is none."""
    if ":" not in address:
        head, dot, _ = address.rpartition(".")
        if dot and head.count(".") == 2:
            return address, f"{head}.0/{IPV4_PREFIX}"
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return "", ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    length = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    network = ipaddress.ip_network((ip, length), strict=False)
    return str(ip), str(network)


def normalize(kind: str, target: str) -> str:
    """The canonical form of ``target`` as a ``kind``; raises TargetError."""
    if kind not in TARGET_KINDS:
        raise TargetError(f"unknown target kind {kind!r} (one of {', '.join(TARGET_KINDS)})")
    text = target.strip()
    if not text:
        raise TargetError(f"an empty {kind}")
    if len(text) > 1024 or not text.isprintable():
        raise TargetError(f"not a {kind}: too long or with control characters")
    if kind == "address":
        try:
            ip = ipaddress.ip_address(text.strip("[]"))
        except ValueError:
            raise TargetError(f"not an IP address: {text!r}") from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return str(ip)
    if kind == "prefix":
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise TargetError(f"not a network prefix: {text!r} (e.g. 10.1.2.0/24)") from None
        want = IPV4_PREFIX if network.version == 4 else IPV6_PREFIX
        if network.prefixlen != want:
            raise TargetError(
                f"{text!r}: a prefix block is a /{IPV4_PREFIX} (IPv4) or /{IPV6_PREFIX} (IPv6); "
                f"block the addresses, or the /{want} that holds them"
            )
        return str(network)
    return text


def token_id(token: str) -> str:
    """What names a JWT in a revocation: its ``jti`` claim, else the digest of its
    ``header.payload`` (not the signature: ES256 signatures are malleable). The
    payload is read without verifying it: this only names the token."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise TargetError("not a JWT (header.payload.signature)")
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError):
        raise TargetError("not a JWT: its payload is not base64url JSON") from None
    jti = claims.get("jti") if isinstance(claims, dict) else None
    if isinstance(jti, str) and jti:
        return jti
    return credential_digest(f"{parts[0]}.{parts[1]}")


def request_token_id(identity: Identity, request: Request, header: str) -> str:
    """The token id of a verified JWT identity (its ``jti``, else the digest of the
    presented token's header.payload); "" for other identities."""
    if identity.kind != "jwt":
        return ""
    jti = identity.claims.get("jti")
    if isinstance(jti, str) and jti:
        return jti
    part = token_part(request.headers.get(header, ""))
    return credential_digest(part) if "." in part else ""
