"""Client addresses through trusted proxies, and the values a rule counts by."""

from __future__ import annotations

import pytest

from authz.model import Identity, Request
from authz.policy.config import RouteConfig
from authz.ratelimit.keys import address_key, client_address, key_part
from authz.stages import Context

# (source Envoy saw, X-Forwarded-For as authz receives it, trusted hops, client)
CASES = [
    ("203.0.113.9", None, 0, "203.0.113.9"),
    ("203.0.113.9", "1.1.1.1, 203.0.113.9", 0, "203.0.113.9"),  # XFF ignored: no trusted hops
    ("10.0.0.2", "198.51.100.7, 10.0.0.2", 1, "198.51.100.7"),  # one LB; Envoy appended its peer
    ("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.2", 1, "198.51.100.7"),  # spoofed entry ignored
    ("10.0.0.2", "6.6.6.6, 198.51.100.7", 1, "198.51.100.7"),  # Envoy did not append
    ("10.0.0.3", "6.6.6.6, 198.51.100.7, 10.0.0.2, 10.0.0.3", 2, "198.51.100.7"),  # two proxies
    ("10.0.0.2", "10.0.0.2", 1, "10.0.0.2"),  # too few entries: trust only the peer
    ("10.0.0.2", "", 3, "10.0.0.2"),
]


@pytest.mark.parametrize(("source", "xff", "hops", "client"), CASES)
def test_client_address(source: str, xff: str | None, hops: int, client: str) -> None:
    assert client_address(source, xff, hops) == client


def test_rotating_the_client_written_part_changes_nothing() -> None:
    seen = {
        client_address("10.0.0.2", f"{i}.{i}.{i}.{i}, 198.51.100.7, 10.0.0.2", 1)
        for i in range(1, 200)
    }
    assert seen == {"198.51.100.7"}


def test_ipv6_is_keyed_by_prefix() -> None:
    assert address_key("2001:db8:1:2:aaaa::1", 64) == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:bbbb::7", 64) == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:bbbb::7", 128) == "2001:db8:1:2:bbbb::7/128"
    assert address_key("::ffff:192.0.2.1", 64) == "192.0.2.1"
    assert address_key("192.0.2.1", 64) == "192.0.2.1"
    assert address_key("not-an-address:x", 64) == "not-an-address:x"


def ctx(identity: Identity | None = None, **request: object) -> Context:
    request.setdefault("method", "GET")
    request.setdefault("path", "/x")
    c = Context(Request(**request), "/x", "")  # type: ignore[arg-type]
    c.route = RouteConfig(name="get-x", path="/x", methods=("GET",))
    if identity is not None:
        c.identity = identity
    return c


def part(name: str, c: Context) -> str:
    return key_part(name, trusted_hops=0, ipv6_prefix=64)(c)


def test_key_parts() -> None:
    jwt = Identity(
        kind="jwt",
        subject="alice",
        provider="corp",
        issuer="https://login",
        claims={"tenant": "acme", "groups": ["b", "a"]},
    )
    c = ctx(jwt, headers={"x-tenant": "t1"}, source_address="192.0.2.9")
    assert part("subject", c) == "corp/alice"
    assert part("issuer", c) == "https://login"
    assert part("claim:tenant", c) == "acme"
    assert part("claim:groups", c) == "a,b"
    assert part("claim:missing", c) == ""
    assert part("header:X-Tenant", c) == "t1"
    assert part("client_address", c) == "192.0.2.9"
    assert part("route", c) == "get-x"
    assert part("method", c) == "GET"
    assert part("api_key", c) == ""
    key = Identity(kind="api_key", subject="team", provider="keys", claims={"key_id": "k1"})
    assert part("api_key", ctx(key)) == "k1"
    mtls = Identity(kind="mtls", subject="spiffe://td/ns/a/sa/b", provider="mesh")
    assert part("spiffe_id", ctx(mtls)) == "spiffe://td/ns/a/sa/b"
    assert part("subject", ctx()) == ""  # anonymous: one shared bucket


def test_unknown_part_is_refused() -> None:
    with pytest.raises(ValueError):
        key_part("cookie", trusted_hops=0, ipv6_prefix=64)
