"""JwtProvider: real keys, real (and hostile) tokens, every reason code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from authz import devissuer
from authz.devissuer import DevIssuerServer, DevKey
from authz.errors import AuthzError, DependencyError, InvalidToken, MultipleCredentials
from authz.identity.bearer import parse_authorization
from authz.identity.jwt import JwtProvider
from authz.model import Request
from authz.policy.config import JwtProviderConfig

ISSUER = "https://issuer.test"
T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(scope="module")
def keys() -> dict[str, DevKey]:
    return {
        "es": devissuer.generate_key("ES256"),
        "rs": devissuer.generate_key("RS256"),
        "ed": devissuer.generate_key("EdDSA"),
        "other": devissuer.generate_key("ES256"),  # not published
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeProvider = Callable[..., Awaitable[JwtProvider]]


@pytest.fixture
async def make(
    tmp_path: Path, keys: dict[str, DevKey], clock: FakeClock
) -> AsyncIterator[MakeProvider]:
    """Builds a started provider over a JWKS file holding the es, rs and ed keys."""
    made: list[JwtProvider] = []

    async def factory(
        published: list[DevKey] | None = None, jwks: Mapping[str, Any] | None = None, **kw: Any
    ) -> JwtProvider:
        path = tmp_path / f"jwks-{len(made)}.json"
        doc = jwks or devissuer.jwks(published or [keys["es"], keys["rs"], keys["ed"]])
        path.write_text(json.dumps(doc))
        values: dict[str, Any] = {
            "name": "dev",
            "issuer": ISSUER,
            "audiences": ("api", "api2"),
            "algorithms": ("RS256", "ES256", "EdDSA"),
            "jwks_file": str(path),
            "leeway": 30.0,
            "max_lifetime": 3600.0,
        }
        values.update(kw)
        provider = JwtProvider(JwtProviderConfig(**values), clock=clock)
        made.append(provider)
        await provider.start()
        return provider

    yield factory
    for p in made:
        await p.aclose()


def mint(key: DevKey, clock: FakeClock, **kw: Any) -> str:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "subject": "alice",
        "audience": "api",
        "scopes": ["orders:read"],
        "now": clock(),
    }
    values.update(kw)
    return devissuer.mint(key, **values)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: Mapping[str, Any], payload: Mapping[str, Any] | None = None, sig: bytes = b""
) -> str:
    """A hand-built token: whatever header and payload an attacker likes."""
    body = payload if payload is not None else claims()
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}.{b64(sig)}"


def claims(**kw: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "iss": ISSUER, "sub": "alice", "aud": "api", "iat": int(T0), "exp": int(T0) + 300,
    }  # fmt: skip
    values.update(kw)
    return values


def request(token: str | None = None, path: str = "/v1/orders", **headers: str) -> Request:
    h = dict(headers)
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    return Request(method="GET", path=path, headers=h)


async def reason(provider: JwtProvider, token: str) -> str:
    with pytest.raises(AuthzError) as err:
        await provider.authenticate(request(token))
    return err.value.reason


# -- success ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["es", "rs", "ed"])
async def test_valid_token_gives_identity(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock, which: str
) -> None:
    provider = await make()
    assert provider.ready() and provider.kind == "jwt" and provider.name == "dev"
    token = mint(keys[which], clock, scopes=["orders:read", "orders:write"], ttl=600)
    identity = await provider.authenticate(request(token))
    assert identity is not None
    assert identity.kind == "jwt"
    assert identity.subject == "alice"
    assert identity.provider == "dev"
    assert identity.issuer == ISSUER
    assert identity.scopes == {"orders:read", "orders:write"}
    assert identity.expires_at == T0 + 600
    assert identity.claims["sub"] == "alice"
    with pytest.raises(TypeError):
        identity.claims["sub"] = "mallory"  # type: ignore[index]


async def test_audience_list_intersecting_is_accepted(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make()
    identity = await provider.authenticate(request(mint(keys["es"], clock, audience=["x", "api2"])))
    assert identity is not None


@pytest.mark.parametrize(
    ("claim", "value", "expected"),
    [
        ("scope", "a b  c", {"a", "b", "c"}),
        ("scp", ["a", "b"], {"a", "b"}),
    ],
)
async def test_scope_claim_shapes(
    make: MakeProvider,
    keys: dict[str, DevKey],
    clock: FakeClock,
    claim: str,
    value: Any,
    expected: set[str],
) -> None:
    provider = await make(scope_claim=claim)
    token = mint(keys["es"], clock, scopes=(), extra_claims={claim: value})
    identity = await provider.authenticate(request(token))
    assert identity is not None and identity.scopes == expected


async def test_token_without_kid_with_single_compatible_key(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make()  # one ES256, one RSA, one Ed25519 key
    token = mint(keys["es"], clock, headers={"kid": None})
    assert await provider.authenticate(request(token)) is not None


async def test_custom_header(make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock) -> None:
    provider = await make(header="x-jwt")
    token = mint(keys["es"], clock)
    ok = Request(method="GET", path="/", headers={"x-jwt": f"bearer {token}"})
    assert await provider.authenticate(ok) is not None
    assert await provider.authenticate(request(token)) is None  # authorization is not ours
    bare = Request(method="GET", path="/", headers={"x-jwt": token})
    with pytest.raises(InvalidToken) as err:
        await provider.authenticate(bare)
    assert err.value.reason == "token_malformed"


# -- abstain and multiple credentials ------------------------------------------------------


async def test_abstains_without_bearer_credential(make: MakeProvider) -> None:
    provider = await make()
    assert await provider.authenticate(request()) is None
    assert await provider.authenticate(request(authorization="Basic YWxpY2U6cHc=")) is None
    assert await provider.authenticate(request(authorization="   ")) is None
    # A query token alone is not accepted (and not a JWT credential of ours).
    assert await provider.authenticate(request(path="/x?access_token=abc")) is None


@pytest.mark.parametrize(
    "value",
    [
        "Bearer a.b.c, Bearer d.e.f",
        "Bearer a.b.c,Bearer a.b.c",
        "Basic YWxpY2U6cHc=, Bearer a.b.c",
        "Bearer a.b.c d.e.f",
        "Bearer a.b.c junk",
    ],
)
async def test_multiple_credentials_in_header(make: MakeProvider, value: str) -> None:
    provider = await make()
    with pytest.raises(MultipleCredentials):
        await provider.authenticate(request(authorization=value))


@pytest.mark.parametrize(
    "path", ["/x?access_token=abc", "/x?a=1&access_token=", "/x?access%5Ftoken=abc"]
)
async def test_token_in_header_and_query_is_multiple(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock, path: str
) -> None:
    provider = await make()
    with pytest.raises(MultipleCredentials):
        await provider.authenticate(request(mint(keys["es"], clock), path=path))


async def test_query_mentioning_access_token_elsewhere_is_fine(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make()
    req = request(mint(keys["es"], clock), path="/docs/access_token?topic=access_token")
    assert await provider.authenticate(req) is not None


def test_parse_authorization_table() -> None:
    assert parse_authorization("Bearer t", dedicated=False) == "t"
    assert parse_authorization("BEARER   t  ", dedicated=False) == "t"
    assert parse_authorization("Digest x", dedicated=False) is None
    with pytest.raises(InvalidToken):
        parse_authorization("Bearer", dedicated=False)


# -- hostile tokens: one test per reason code ----------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "e30.e30.e30.",
        "!!!.e30.AA",
        "e30.e30.A",  # impossible base64url length
        "eyJhbGciOiJFUzI1NiJ9.e31.AA",  # non-canonical base64url ("e31" == "e30")
        b64(b"not json") + ".e30.AA",
        b64(b'["alg"]') + ".e30.AA",
        b64(b'{"alg":"ES256"}') + "." + b64(b"[1,2]") + ".AA",
        b64(b'{"alg":"ES256"}') + "." + b64(b"{bad") + ".AA",
        "x" * 20_000,
    ],
)
async def test_malformed(make: MakeProvider, token: str) -> None:
    provider = await make()
    assert await reason(provider, token) == "token_malformed"


async def test_malformed_kid_and_non_finite_claims(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make()
    assert await reason(provider, forge({"alg": "ES256", "kid": 7})) == "token_malformed"
    # Signed by the issuer, but NaN would defeat every time comparison.
    nan = mint(keys["es"], clock, extra_claims={"exp": float("nan")})
    assert await reason(provider, nan) == "token_malformed"
    huge = mint(keys["es"], clock, extra_claims={"exp": 10**400})
    assert await reason(provider, huge) == "token_malformed"
    bad_scope = mint(keys["es"], clock, extra_claims={"scope": {"a": 1}})
    assert await reason(provider, bad_scope) == "token_claim_type"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_is_refused(make: MakeProvider, keys: dict[str, DevKey], alg: str) -> None:
    provider = await make(algorithms=("RS256", "ES256", "none"))
    token = forge({"alg": alg, "typ": "JWT", "kid": keys["es"].kid})
    assert await reason(provider, token) == "token_algorithm_not_allowed"


async def test_missing_or_unlisted_alg_is_refused(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make(algorithms=("RS256",))
    assert await reason(provider, forge({"kid": keys["es"].kid})) == "token_algorithm_not_allowed"
    assert await reason(provider, forge({"alg": ""})) == "token_algorithm_not_allowed"
    assert await reason(provider, forge({"alg": ["RS256"]})) == "token_algorithm_not_allowed"
    # A perfectly good ES256 token, but this provider only takes RS256.
    assert await reason(provider, mint(keys["es"], clock)) == "token_algorithm_not_allowed"


def hs256_with_public_pem(key: DevKey, payload: Mapping[str, Any], *, kid: bool = True) -> str:
    """The classic key-confusion attack: HMAC keyed with the issuer's public key."""
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = key.kid
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


@pytest.mark.parametrize(
    "algorithms", [("RS256", "ES256"), ("RS256", "HS256"), ("HS256", "RS256", "ES256")]
)
async def test_hs256_signed_with_rsa_public_key_is_refused(
    make: MakeProvider, keys: dict[str, DevKey], algorithms: tuple[str, ...]
) -> None:
    # Even when a careless policy lists HS256, an RSA key is never an HMAC secret.
    provider = await make(algorithms=algorithms)
    token = hs256_with_public_pem(keys["rs"], claims())
    assert await reason(provider, token) == "token_algorithm_not_allowed"
    no_kid = hs256_with_public_pem(keys["rs"], claims(), kid=False)
    assert await reason(provider, no_kid) == "token_algorithm_not_allowed"


async def test_alg_must_fit_key_family_and_jwk_alg(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make(algorithms=("RS256", "PS256", "ES256", "ES384", "EdDSA"))
    # ES256 header pointing at the RSA key.
    wrong_family = forge({"alg": "ES256", "kid": keys["rs"].kid}, sig=b"x" * 64)
    assert await reason(provider, wrong_family) == "token_algorithm_not_allowed"
    # PS256 really signed with the RSA key, whose JWK says alg RS256.
    ps = devissuer.mint(
        devissuer.DevKey(keys["rs"].private_key, "PS256", keys["rs"].kid),
        issuer=ISSUER, subject="alice", audience="api", now=clock(),
    )  # fmt: skip
    assert await reason(provider, ps) == "token_algorithm_not_allowed"
    # ES384 header against a P-256 key.
    es384 = forge({"alg": "ES384", "kid": keys["es"].kid}, sig=b"x" * 96)
    assert await reason(provider, es384) == "token_algorithm_not_allowed"


async def test_jwk_without_alg_still_bound_to_family(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    jwk = keys["rs"].public_jwk()
    del jwk["alg"]
    provider = await make(jwks={"keys": [jwk]}, algorithms=("RS256", "PS256", "HS256"))
    ps = devissuer.mint(
        devissuer.DevKey(keys["rs"].private_key, "PS256", keys["rs"].kid),
        issuer=ISSUER, subject="alice", audience="api", now=clock(),
    )  # fmt: skip
    assert await provider.authenticate(request(ps)) is not None
    assert (
        await reason(provider, hs256_with_public_pem(keys["rs"], claims()))
        == "token_algorithm_not_allowed"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://evil.test/jwks.json"),
        ("x5u", "https://evil.test/cert.pem"),
        ("jwk", {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
        ("x5c", ["MIIB"]),
        ("crit", ["exp"]),
    ],
)
async def test_forbidden_headers(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock, name: str, value: Any
) -> None:
    provider = await make()
    # Properly signed by the real key: the header alone is the problem.
    token = mint(keys["es"], clock, headers={name: value})
    assert await reason(provider, token) == "token_header_forbidden"


async def test_jwk_header_with_attacker_key_is_not_honoured(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make()
    attacker = keys["other"]
    token = mint(attacker, clock, headers={"jwk": attacker.public_jwk()})
    assert await reason(provider, token) == "token_header_forbidden"


async def test_unknown_kid(make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock) -> None:
    provider = await make()
    assert await reason(provider, mint(keys["other"], clock)) == "token_unknown_kid"


async def test_no_kid_with_several_compatible_keys(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make(published=[keys["es"], keys["other"]])
    token = mint(keys["es"], clock, headers={"kid": None})
    assert await reason(provider, token) == "token_unknown_kid"


async def test_bad_signature(make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock) -> None:
    provider = await make()
    # Signed by another key under the real kid.
    impostor = mint(keys["other"], clock, headers={"kid": keys["es"].kid})
    assert await reason(provider, impostor) == "token_bad_signature"
    # A real token whose payload was edited.
    h, _, s = mint(keys["rs"], clock).split(".")
    edited = f"{h}.{b64(json.dumps(claims(sub='root')).encode())}.{s}"
    assert await reason(provider, edited) == "token_bad_signature"
    # Signature stripped.
    assert await reason(provider, f"{h}.{b64(json.dumps(claims()).encode())}.") == (
        "token_bad_signature"
    )


async def test_wrong_issuer(make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock) -> None:
    provider = await make()
    for iss in ("https://evil.test", ISSUER + "/", ISSUER.upper()):
        assert await reason(provider, mint(keys["es"], clock, issuer=iss)) == "token_wrong_issuer"
    missing = mint(keys["es"], clock, extra_claims={"iss": None})
    assert await reason(provider, missing) == "token_wrong_issuer"


@pytest.mark.parametrize("aud", ["other", ["x", "y"], None, []])
async def test_wrong_audience(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock, aud: Any
) -> None:
    provider = await make()
    token = mint(keys["es"], clock, extra_claims={"aud": aud})
    assert await reason(provider, token) == "token_wrong_audience"


async def test_expired_with_leeway(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make(leeway=30.0)
    token = mint(keys["es"], clock, ttl=60)
    clock.advance(60 + 29)
    assert (await provider.verify(token))[0].subject == "alice"
    clock.advance(1)
    assert await reason(provider, token) == "token_expired"


async def test_not_yet_valid(make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock) -> None:
    provider = await make(leeway=30.0)
    future_nbf = mint(keys["es"], clock, extra_claims={"nbf": clock() + 31})
    assert await reason(provider, future_nbf) == "token_not_yet_valid"
    future_iat = mint(keys["es"], clock, now=clock() + 31)
    assert await reason(provider, future_iat) == "token_not_yet_valid"
    within_leeway = mint(keys["es"], clock, now=clock() + 29)
    assert await provider.authenticate(request(within_leeway)) is not None


async def test_missing_exp(make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock) -> None:
    provider = await make()
    token = mint(keys["es"], clock, extra_claims={"exp": None})
    assert await reason(provider, token) == "token_missing_exp"


async def test_lifetime_too_long(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make(max_lifetime=3600.0, leeway=30.0)
    assert await provider.authenticate(request(mint(keys["es"], clock, ttl=3630))) is not None
    too_long = mint(keys["es"], clock, ttl=3631)
    assert await reason(provider, too_long) == "token_lifetime_too_long"
    # Without iat or nbf, the lifetime is counted from now.
    no_iat = mint(
        keys["es"], clock, extra_claims={"iat": None, "nbf": None, "exp": clock() + 86400}
    )
    assert await reason(provider, no_iat) == "token_lifetime_too_long"
    no_iat_ok = mint(
        keys["es"], clock, extra_claims={"iat": None, "nbf": None, "exp": clock() + 600}
    )
    assert await provider.authenticate(request(no_iat_ok)) is not None


@pytest.mark.parametrize("sub", [None, ""])
async def test_missing_subject(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock, sub: Any
) -> None:
    provider = await make()
    token = mint(keys["es"], clock, extra_claims={"sub": sub} if sub is not None else {"sub": None})
    assert await reason(provider, token) == "token_missing_subject"


async def test_mangled_tokens_only_ever_raise_invalid_token(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make()
    token = mint(keys["rs"], clock)
    rng = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ,\x00é"
    for _ in range(400):
        chars = list(token)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        mangled = "".join(chars)
        if mangled == token:
            continue
        try:
            await provider.verify(mangled)
        except InvalidToken:
            pass
        except MultipleCredentials:
            pass


# -- the verified-token cache --------------------------------------------------------------


async def test_cache_hit_skips_verification(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make()
    token = mint(keys["rs"], clock)
    first = await provider.authenticate(request(token))
    second = await provider.authenticate(request(token))
    assert first is second
    assert provider.verifications == 1 and provider.cache_hits == 1


async def test_cache_never_used_past_exp(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make(leeway=0.0)
    token = mint(keys["es"], clock, ttl=60)
    assert await provider.authenticate(request(token)) is not None
    clock.advance(59.999)
    assert await provider.authenticate(request(token)) is not None
    assert provider.cache_hits == 1
    clock.advance(0.001)  # exactly exp
    assert await reason(provider, token) == "token_expired"
    assert provider.verifications == 2 and provider.cached == 0


async def test_cache_reuse_matches_verification_leeway(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make(leeway=30.0)
    token = mint(keys["es"], clock, ttl=60)
    await provider.authenticate(request(token))
    clock.advance(89.5)
    assert await provider.authenticate(request(token)) is not None
    assert provider.verifications == 1
    clock.advance(0.5)
    assert await reason(provider, token) == "token_expired"


async def test_failures_are_not_cached(make: MakeProvider, keys: dict[str, DevKey]) -> None:
    provider = await make()
    bad = forge({"alg": "none"})
    for _ in range(3):
        await reason(provider, bad)
    assert provider.verifications == 3 and provider.cached == 0


async def test_cache_is_a_bounded_lru(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make(cache_size=3)
    tokens = [mint(keys["es"], clock, subject=f"user{i}") for i in range(5)]
    for t in tokens[:3]:
        await provider.authenticate(request(t))
    await provider.authenticate(request(tokens[0]))  # most recently used now
    await provider.authenticate(request(tokens[3]))  # evicts tokens[1]
    assert provider.cached == 3
    verifications = provider.verifications
    await provider.authenticate(request(tokens[0]))
    assert provider.verifications == verifications  # still cached
    await provider.authenticate(request(tokens[1]))
    assert provider.verifications == verifications + 1  # was evicted
    for t in tokens:
        await provider.authenticate(request(t))
    assert provider.cached == 3


async def test_cache_disabled(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make(cache_size=0)
    token = mint(keys["es"], clock)
    await provider.authenticate(request(token))
    await provider.authenticate(request(token))
    assert provider.verifications == 2 and provider.cached == 0


# -- against a live issuer -------------------------------------------------------------------


@pytest.fixture
def live(keys: dict[str, DevKey]) -> Iterator[DevIssuerServer]:
    with DevIssuerServer([keys["es"]]) as server:
        yield server


async def test_rotation_through_discovery(
    live: DevIssuerServer, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    config = JwtProviderConfig(
        name="live", issuer=live.url, audiences=("api",), algorithms=("ES256",), discovery=True
    )
    provider = JwtProvider(config, clock=clock)
    await provider.start()
    try:
        assert provider.ready()
        old = mint(keys["es"], clock, issuer=live.url)
        assert await provider.authenticate(request(old)) is not None
        live.add_key(keys["other"])
        clock.advance(config.jwks_refresh_interval)
        new = mint(keys["other"], clock, issuer=live.url)
        identity = await provider.authenticate(request(new))
        assert identity is not None and identity.issuer == live.url
        assert live.hits["/jwks.json"] == 2
        assert provider.jwks.unknown_kid_refreshes == 1
    finally:
        await provider.aclose()


async def test_unreachable_issuer_is_a_dependency_error(
    keys: dict[str, DevKey], clock: FakeClock
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = JwtProviderConfig(
        name="down", issuer=ISSUER, audiences=("api",),
        jwks_uri=f"http://127.0.0.1:{port}/jwks.json", jwks_timeout=1.0,
    )  # fmt: skip
    provider = JwtProvider(config, clock=clock)
    await provider.start()
    try:
        assert not provider.ready()
        with pytest.raises(DependencyError) as err:
            await provider.authenticate(request(mint(keys["es"], clock)))
        assert err.value.reason == "jwks_unavailable"
    finally:
        await provider.aclose()


# -- the cache never outlives the keys ------------------------------------------------------


async def test_cached_token_denied_once_its_key_leaves_the_jwks_file(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make([keys["es"], keys["rs"]])
    revoked = mint(keys["rs"], clock)
    kept = mint(keys["es"], clock)
    for token in (revoked, kept):
        assert await provider.authenticate(request(token)) is not None
    assert provider.cached == 2
    assert provider.jwks.config.jwks_file is not None
    path = Path(provider.jwks.config.jwks_file)
    path.write_text(json.dumps(devissuer.jwks([keys["es"]])))
    os.utime(path, ns=(1, 1))  # a new stamp even on a coarse-mtime filesystem
    assert await provider.jwks.refresh()
    assert [k.kid for k in provider.jwks.keys] == [keys["es"].kid]

    assert await reason(provider, revoked) == "token_unknown_kid"
    verifications = provider.verifications
    # The key that stayed keeps its cache entries: an unchanged key is the same key.
    assert await provider.authenticate(request(kept)) is not None
    assert provider.verifications == verifications


async def test_cached_token_denied_after_rotation_on_a_live_issuer(
    keys: dict[str, DevKey], clock: FakeClock
) -> None:
    with DevIssuerServer([keys["es"], keys["other"]]) as live:
        config = JwtProviderConfig(
            name="live", issuer=ISSUER, audiences=("api",), algorithms=("ES256",),
            jwks_uri=live.jwks_uri,
        )  # fmt: skip
        provider = JwtProvider(config, clock=clock)
        await provider.start()
        try:
            revoked = mint(keys["other"], clock)
            kept = mint(keys["es"], clock)
            for token in (revoked, kept):
                assert await provider.authenticate(request(token)) is not None
            live.remove_key(keys["other"].kid)
            clock.advance(config.jwks_ttl)
            assert await provider.jwks.refresh()  # what the background task does when due
            assert live.hits["/jwks.json"] == 2
            assert await reason(provider, revoked) == "token_unknown_kid"
            assert await provider.authenticate(request(kept)) is not None
        finally:
            await provider.aclose()


async def test_cached_token_denied_when_its_kid_now_names_another_key(
    make: MakeProvider, keys: dict[str, DevKey], clock: FakeClock
) -> None:
    provider = await make([keys["es"]])
    token = mint(keys["es"], clock)
    assert await provider.authenticate(request(token)) is not None
    # The issuer reuses the kid for a new key (a careless rotation, or a takeover).
    impostor = dict(keys["other"].public_jwk(), kid=keys["es"].kid)
    assert provider.jwks.config.jwks_file is not None
    path = Path(provider.jwks.config.jwks_file)
    path.write_text(json.dumps({"keys": [impostor]}))
    os.utime(path, ns=(1, 1))
    assert await provider.jwks.refresh()
    assert await reason(provider, token) == "token_bad_signature"


async def test_cached_token_fails_closed_once_keys_are_stale(
    keys: dict[str, DevKey], clock: FakeClock
) -> None:
    with DevIssuerServer([keys["es"]]) as live:
        config = JwtProviderConfig(
            name="live", issuer=ISSUER, audiences=("api",), algorithms=("ES256",),
            jwks_uri=live.jwks_uri, jwks_stale_ttl=600.0, max_lifetime=86400.0,
        )  # fmt: skip
        provider = JwtProvider(config, clock=clock)
        await provider.start()
        try:
            token = mint(keys["es"], clock, ttl=7200)
            assert await provider.authenticate(request(token)) is not None
            live.unavailable = True
            clock.advance(599)  # still within jwks_stale_ttl: the cache answers
            assert await provider.authenticate(request(token)) is not None
            assert provider.ready()
            clock.advance(1)  # 600 s without a good fetch: the keys are stale
            with pytest.raises(DependencyError) as err:
                await provider.authenticate(request(token))
            assert err.value.reason == "jwks_unavailable" and err.value.status == 503
            assert not provider.ready()
            live.unavailable = False  # the issuer is back: so is the token
            clock.advance(config.jwks_refresh_interval)
            assert await provider.authenticate(request(token)) is not None
            assert provider.ready()
        finally:
            await provider.aclose()
