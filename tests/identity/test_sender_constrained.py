"""Sender-constrained tokens at the provider: RFC 8705 certificate binding and
RFC 9449 DPoP proofs, with real keys and certificates; cache hits checked too."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from authz import devissuer
from authz.devissuer import DevKey
from authz.errors import AuthzError, DpopError
from authz.identity.base import WAIT
from authz.identity.dpop import MemoryReplayCache, normalise_url
from authz.identity.jwt import JwtProvider
from authz.identity.sender import certificate_thumbprint
from authz.model import Request
from authz.policy.config import DpopConfig, JwtProviderConfig
from tests.certs import generate_ca, issue_cert
from tests.dpop_support import jkt, proof, x5t

ISSUER = "https://issuer.test"
URL = "https://api.test/v1/orders"
Make = Callable[..., Awaitable[JwtProvider]]


class Clock:
    def __init__(self) -> None:
        import time

        self.t = float(int(time.time()))

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def issuer() -> DevKey:
    return devissuer.generate_key("ES256")


@pytest.fixture(scope="module")
def client_key() -> DevKey:
    return devissuer.generate_key("ES256")


@pytest.fixture(scope="module")
def certs() -> tuple[str, str]:
    ca = generate_ca("test CA")
    a = issue_cert(ca, "a", uris=["spiffe://t/a"], client=True).cert_pem
    b = issue_cert(ca, "b", uris=["spiffe://t/b"], client=True).cert_pem
    return a, b


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make(tmp_path: Path, issuer: DevKey, clock: Clock) -> AsyncIterator[Make]:
    made: list[JwtProvider] = []

    async def factory(**kw: Any) -> JwtProvider:
        path = tmp_path / f"jwks-{len(made)}.json"
        path.write_text(json.dumps(devissuer.jwks([issuer])))
        values: dict[str, Any] = {
            "name": "dev", "issuer": ISSUER, "audiences": ("api",), "jwks_file": str(path),
        }  # fmt: skip
        values.update(kw)
        provider = JwtProvider(JwtProviderConfig(**values), clock=clock)
        made.append(provider)
        await provider.start()
        return provider

    yield factory
    for p in made:
        await p.aclose()


def mint(issuer: DevKey, clock: Clock, **claims: Any) -> str:
    return devissuer.mint(
        issuer, issuer=ISSUER, subject="alice", audience="api", now=clock(), extra_claims=claims
    )


def req(
    token: str, *, scheme: str = "Bearer", cert: str = "", dpop: str | None = None,
    method: str = "GET", path: str = "/v1/orders?x=1",
) -> Request:  # fmt: skip
    headers = {"authorization": f"{scheme} {token}"}
    if dpop is not None:
        headers["dpop"] = dpop
    return Request(
        method=method, path=path, host="api.test", headers=headers, scheme="https",
        peer_certificate=quote(cert, safe="") if cert else "",
    )  # fmt: skip


async def reason(provider: JwtProvider, request: Request) -> str:
    with pytest.raises(AuthzError) as err:
        await provider.authenticate(request)
    return err.value.reason


# -- RFC 8705 ----------------------------------------------------------------------------


def test_thumbprint_of_the_url_encoded_pem(certs: tuple[str, str]) -> None:
    a, _ = certs
    assert certificate_thumbprint(quote(a, safe="")) == x5t(a) == certificate_thumbprint(a)
    assert certificate_thumbprint("") is None
    assert certificate_thumbprint("not a certificate") is None


async def test_certificate_bound_token(
    make: Make, issuer: DevKey, clock: Clock, certs: tuple[str, str]
) -> None:
    a, b = certs
    provider = await make()
    token = mint(issuer, clock, cnf={"x5t#S256": x5t(a)})
    assert await provider.authenticate(req(token, cert=a)) is not None
    # the cache answers the next one, and checks the certificate each time
    assert provider.authenticate_now(req(token, cert=a)) is not None
    for other in (b, ""):
        with pytest.raises(AuthzError) as err:
            provider.authenticate_now(req(token, cert=other))
        assert err.value.reason == "token_certificate_mismatch"
        assert await reason(provider, req(token, cert=other)) == "token_certificate_mismatch"
    assert provider.verifications == 1


@pytest.mark.parametrize("cnf", ["x", {"x5t#S256": 5}, {"jkt": ["a"]}])
async def test_malformed_cnf(make: Make, issuer: DevKey, clock: Clock, cnf: Any) -> None:
    provider = await make()
    assert await reason(provider, req(mint(issuer, clock, cnf=cnf))) == "token_claim_type"


# -- RFC 9449 ----------------------------------------------------------------------------


async def test_valid_proof_then_replay(
    make: Make, issuer: DevKey, client_key: DevKey, clock: Clock
) -> None:
    provider = await make(dpop=DpopConfig())
    token = mint(issuer, clock, cnf={"jkt": jkt(client_key)})
    p = proof(client_key, "GET", URL, token, iat=clock())
    identity = await provider.authenticate(req(token, scheme="DPoP", dpop=p))
    assert identity is not None and identity.subject == "alice"
    # the same proof again (the token now cached): refused as a replay
    assert provider.authenticate_now(req(token, scheme="DPoP", dpop=p)) is WAIT  # a proof
    assert await reason(provider, req(token, scheme="DPoP", dpop=p)) == "dpop_proof_replayed"
    fresh = proof(client_key, "GET", URL, token, iat=clock())
    assert await provider.authenticate(req(token, scheme="DPoP", dpop=fresh)) is not None


async def test_proof_must_fit_the_request(
    make: Make, issuer: DevKey, client_key: DevKey, clock: Clock
) -> None:
    provider = await make(dpop=DpopConfig(iat_window=60))
    token = mint(issuer, clock, cnf={"jkt": jkt(client_key)})
    other = mint(issuer, clock, cnf={"jkt": jkt(client_key)}, jti="other")
    cases = {
        "method": proof(client_key, "POST", URL, token),
        "url": proof(client_key, "GET", "https://api.test/v1/other", token),
        "host": proof(client_key, "GET", "https://evil.test/v1/orders", token),
        "old": proof(client_key, "GET", URL, token, iat=clock() - 120),
        "future": proof(client_key, "GET", URL, token, iat=clock() + 60),
        "ath": proof(client_key, "GET", URL, other),
        "no ath": proof(client_key, "GET", URL, None),
        "typ": proof(client_key, "GET", URL, token, headers={"typ": "jwt"}),
        "no jti": proof(client_key, "GET", URL, token, jti="", ),
        "two": proof(client_key, "GET", URL, token) + "," + proof(client_key, "GET", URL, token),
        "garbage": "a.b.c",
    }  # fmt: skip
    for name, p in cases.items():
        with pytest.raises(DpopError) as err:
            await provider.authenticate(req(token, scheme="DPoP", dpop=p))
        assert err.value.reason == "dpop_proof_invalid", name
        (header,) = err.value.challenge("api")
        assert header[0] == "www-authenticate"
        assert header[1].startswith('DPoP realm="api", error="invalid_dpop_proof", algs="ES256')
    assert await reason(provider, req(token, scheme="DPoP")) == "dpop_proof_invalid"  # no proof
    # normalisation: case, default port, percent-encoding, query ignored
    ok = proof(client_key, "GET", "HTTPS://API.test:443/v1/%6frders?q=1#f", token)
    assert await provider.authenticate(req(token, scheme="DPoP", dpop=ok)) is not None


async def test_proof_key_must_be_the_tokens(
    make: Make, issuer: DevKey, client_key: DevKey, clock: Clock
) -> None:
    provider = await make(dpop=DpopConfig())
    thief = devissuer.generate_key("ES256")
    token = mint(issuer, clock, cnf={"jkt": jkt(client_key)})
    p = proof(thief, "GET", URL, token)
    assert await reason(provider, req(token, scheme="DPoP", dpop=p)) == "dpop_key_mismatch"


async def test_symmetric_or_private_proof_keys_are_refused(
    make: Make, issuer: DevKey, client_key: DevKey, clock: Clock
) -> None:
    import jwt as pyjwt

    provider = await make(dpop=DpopConfig())
    token = mint(issuer, clock, cnf={"jkt": jkt(client_key)})
    claims = {"jti": "j", "htm": "GET", "htu": URL, "iat": int(clock())}
    hs = pyjwt.encode(claims, "k" * 32, algorithm="HS256", headers={"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": "a2s"}})  # fmt: skip
    assert await reason(provider, req(token, scheme="DPoP", dpop=hs)) == "dpop_proof_invalid"
    leaky = proof(client_key, "GET", URL, token, headers={"jwk": {**client_key.public_jwk(), "d": "x"}})  # fmt: skip
    assert await reason(provider, req(token, scheme="DPoP", dpop=leaky)) == "dpop_proof_invalid"


async def test_scheme_and_binding_rules(
    make: Make, issuer: DevKey, client_key: DevKey, clock: Clock
) -> None:
    allowed = await make(dpop=DpopConfig())
    bound = mint(issuer, clock, cnf={"jkt": jkt(client_key)})
    plain = mint(issuer, clock)
    # a DPoP-bound token is never a bearer token (RFC 9449 7.2), cached or not
    assert await reason(allowed, req(bound)) == "dpop_key_mismatch"
    # DPoP scheme with an unbound token
    p = proof(client_key, "GET", URL, plain)
    assert await reason(allowed, req(plain, scheme="DPoP", dpop=p)) == "dpop_key_mismatch"
    assert await allowed.authenticate(req(plain)) is not None  # allowed: Bearer still fine
    required = await make(dpop=DpopConfig(mode="required"))
    assert await reason(required, req(plain)) == "token_not_sender_constrained"
    # a provider without DPoP refuses a DPoP-bound token and does not read the scheme
    none = await make()
    assert await reason(none, req(bound)) == "dpop_key_mismatch"
    assert await none.authenticate(req(bound, scheme="DPoP", dpop=p)) is None


async def test_replay_cache_is_bounded_and_fails_closed() -> None:
    from authz.errors import DpopReplayUnavailable

    cache = MemoryReplayCache(2)
    assert await cache.first_use("a", 10, 0) and await cache.first_use("b", 20, 0)
    assert not await cache.first_use("a", 10, 1)
    with pytest.raises(DpopReplayUnavailable):
        await cache.first_use("c", 30, 5)  # full of live proofs
    assert await cache.first_use("c", 30, 11)  # "a" left the window
    assert len(cache) == 2


def test_normalise_url() -> None:
    assert normalise_url("HTTPS://Example.COM:443") == "https://example.com/"
    assert normalise_url("http://e.com:8080/a%2fb%7E") == "http://e.com:8080/a%2Fb~"
    assert normalise_url("https://user@e.com/") is None
    assert normalise_url("ftp://e.com/") is None


# -- the replay cache shared through Redis (a real redis-server) -------------------------


async def test_replay_is_refused_across_providers_sharing_redis(
    make: Make, issuer: DevKey, client_key: DevKey, clock: Clock, tmp_path: Path
) -> None:
    from authz.errors import DpopReplayUnavailable
    from authz.identity.dpop_redis import RedisReplayCache
    from authz.policy.ratelimit_config import RedisStoreConfig
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisStoreConfig(name="shared", url=server.url, timeout=0.5)
        caches = [RedisReplayCache(store), RedisReplayCache(store)]
        one = await make(dpop=DpopConfig())
        two = await make(dpop=DpopConfig())
        assert one.proofs is not None and two.proofs is not None
        one.proofs.replay, two.proofs.replay = caches  # two processes, one store
        token = mint(issuer, clock, cnf={"jkt": jkt(client_key)})
        p = proof(client_key, "GET", URL, token, iat=clock())
        assert await one.authenticate(req(token, scheme="DPoP", dpop=p)) is not None
        assert await reason(two, req(token, scheme="DPoP", dpop=p)) == "dpop_proof_replayed"
        keys = server.command("KEYS", "authz:dpop:*").split()
        assert keys and b"." not in b"".join(keys)  # digests, not the client's jti
    finally:
        server.stop()
    # the store is down: fail closed
    fresh = proof(client_key, "GET", URL, token, iat=clock())
    with pytest.raises(DpopReplayUnavailable) as err:
        await one.authenticate(req(token, scheme="DPoP", dpop=fresh))
    assert err.value.status == 503 and err.value.reason == "dpop_replay_unavailable"
    for c in caches:
        await c.aclose()
