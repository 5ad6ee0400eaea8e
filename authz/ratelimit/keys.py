"""Bucket keys from a request: which values a rule counts by.

The client address is the peer address Envoy saw (``source.address`` of the
CheckRequest). ``X-Forwarded-For`` is believed only through ``trusted_hops``
proxies in front of Envoy, read from the right as Envoy's
``xff_num_trusted_hops`` does: with N trusted hops, the client is the address
the outermost trusted proxy saw; entries a client writes itself (further
left) are never used. IPv6 addresses are keyed by their prefix (``/64`` by
default), so rotating through one's own subnet does not make new buckets.

A value that is absent (no identity on a public route, a header not sent, a
claim not in the token) is the empty string: all such requests share one
bucket, which limits them together rather than not at all.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from functools import lru_cache

from authz.stages import Context

KeyPart = Callable[["Context"], str]
SEPARATOR = "\x1f"
#: Memory keys longer than this are hashed (headers and claims can be long).
MAX_KEY_LENGTH = 160


def client_address(source: str, forwarded_for: str | None, trusted_hops: int) -> str:
    """The client's address: the peer, or X-Forwarded-For through ``trusted_hops``."""
    if trusted_hops <= 0 or not forwarded_for:
        return source
    hops = [h.strip() for h in forwarded_for.split(",")]
    if hops and hops[-1] == source:
        hops.pop()  # Envoy appended the peer it saw (use_remote_address)
    # chain from the client to us: the XFF entries, then the peer itself
    chain = [*hops, source]
    if len(chain) <= trusted_hops:
        return source  # fewer entries than trusted proxies: trust only the peer (as Envoy)
    found = chain[-1 - trusted_hops]
    return found if found else source


@lru_cache(maxsize=4096)
def address_key(address: str, ipv6_prefix: int) -> str:
    """A normalised address; IPv6 reduced to its prefix (``2001:db8::/64``)."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


def key_part(part: str, *, trusted_hops: int, ipv6_prefix: int) -> KeyPart:
    """A function from a request's context to the value of one key part."""
    if part == "client_address":

        def address(ctx: Context) -> str:
            request = ctx.request
            found = client_address(
                request.source_address, request.headers.get("x-forwarded-for"), trusted_hops
            )
            return address_key(found, ipv6_prefix)

        return address
    if part == "subject":
        return lambda ctx: (
            f"{ctx.identity.provider}/{ctx.identity.subject}" if ctx.identity.subject else ""
        )
    if part == "api_key":
        return lambda ctx: (
            str(ctx.identity.claims.get("key_id", "")) if ctx.identity.kind == "api_key" else ""
        )
    if part == "spiffe_id":
        return lambda ctx: (
            ctx.identity.subject if ctx.identity.kind == "mtls" else ctx.request.principal
        )
    if part == "issuer":
        return lambda ctx: ctx.identity.issuer
    if part == "route":
        return lambda ctx: ctx.route.name if ctx.route is not None else ""
    if part == "method":
        return lambda ctx: ctx.request.method
    if part.startswith("header:"):
        name = part.split(":", 1)[1].lower()
        return lambda ctx: ctx.request.headers.get(name, "")
    if part.startswith("claim:"):
        claim = part.split(":", 1)[1]

        def claim_value(ctx: Context) -> str:
            value = ctx.identity.claims.get(claim)
            if value is None:
                return ""
            if isinstance(value, list | tuple):
                return ",".join(sorted(str(v) for v in value))
            return str(value)

        return claim_value
    raise ValueError(f"unknown key part {part!r}")


def digest(values: str) -> str:
    """A short, stable digest of key values (stored keys carry no value in clear)."""
    return hashlib.blake2b(values.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
