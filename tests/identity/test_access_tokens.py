"""Access tokens only, read strictly: JOSE ``typ`` (RFC 9068), ID / logout / refresh
tokens refused, duplicate member names refused, registered claim types enforced."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from authz import devissuer, strictjson
from authz.devissuer import DevKey
from authz.errors import AuthzError
from authz.identity.jwt import JwtProvider
from authz.model import Request
from authz.policy.config import JwtProviderConfig

ISSUER = "https://issuer.test"
T0 = 1_800_000_000.0

Make = Callable[..., Awaitable[JwtProvider]]


@pytest.fixture(scope="module")
def key() -> DevKey:
    return devissuer.generate_key("ES256")


@pytest.fixture
async def make(tmp_path: Path, key: DevKey) -> AsyncIterator[Make]:
    made: list[JwtProvider] = []

    async def factory(**kw: Any) -> JwtProvider:
        path = tmp_path / f"jwks-{len(made)}.json"
        path.write_text(json.dumps(devissuer.jwks([key])))
        values: dict[str, Any] = {
            "name": "dev", "issuer": ISSUER, "audiences": ("api",), "jwks_file": str(path),
        }  # fmt: skip
        values.update(kw)
        provider = JwtProvider(JwtProviderConfig(**values), clock=lambda: T0)
        made.append(provider)
        await provider.start()
        return provider

    yield factory
    for p in made:
        await p.aclose()


def mint(key: DevKey, headers: dict[str, Any] | None = None, **claims: Any) -> str:
    return devissuer.mint(
        key, issuer=ISSUER, subject="alice", audience="api", scopes="read", now=T0,
        headers=headers, extra_claims=claims,
    )  # fmt: skip


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_raw(key: DevKey, header_json: bytes, payload_json: bytes) -> str:
    """A token signed by the issuer's key over exactly these JSON texts."""
    from jwt.algorithms import ECAlgorithm

    signing_input = f"{b64(header_json)}.{b64(payload_json)}".encode()
    assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    sig = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input, key.private_key)
    return f"{signing_input.decode()}.{b64(sig)}"


def request(token: str) -> Request:
    return Request(method="GET", path="/", headers={"authorization": f"Bearer {token}"})


async def reason(provider: JwtProvider, token: str) -> str:
    with pytest.raises(AuthzError) as err:
        await provider.authenticate(request(token))
    return err.value.reason


# -- typ ------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt"])
async def test_default_typ_accepts_access_token_types(make: Make, key: DevKey, typ: Any) -> None:
    provider = await make()
    assert await provider.authenticate(request(mint(key, {"typ": typ}))) is not None


@pytest.mark.parametrize(
    "typ", ["logout+jwt", "secevent+jwt", "dpop+jwt", "id_token+jwt", "application/jwt+refresh"]
)
async def test_default_typ_refuses_other_types(make: Make, key: DevKey, typ: str) -> None:
    provider = await make()
    assert await reason(provider, mint(key, {"typ": typ})) == "token_not_access_token"


async def test_strict_typ_requires_at_jwt(make: Make, key: DevKey) -> None:
    provider = await make(typ=("at+jwt",))
    for ok in ("at+jwt", "Application/AT+JWT"):
        assert await provider.authenticate(request(mint(key, {"typ": ok}))) is not None
    for bad in ("JWT", None):
        assert await reason(provider, mint(key, {"typ": bad})) == "token_not_access_token"
    assert await reason(provider, mint(key, {"typ": 7})) == "token_malformed"


@pytest.mark.parametrize(
    "claims",
    [
        {"nonce": "n-0S6_WzA2Mj"},  # an OIDC ID token
        {"at_hash": "77QmUPtjPfzWtF2AnpK9RQ"},
        {"c_hash": "LDktKdoQak3Pk0cnXxCltA"},
        {"events": {"http://schemas.openid.net/event/backchannel-logout": {}}},  # logout
        {"typ": "Refresh"},  # Keycloak refresh token
        {"typ": "ID"},  # Keycloak ID token
        {"typ": "Offline"},
        {"token_use": "id"},  # Cognito ID token
    ],
)
async def test_id_logout_refresh_tokens_are_refused(
    make: Make, key: DevKey, claims: dict[str, Any]
) -> None:
    provider = await make()
    assert await reason(provider, mint(key, **claims)) == "token_not_access_token"
    strict = await make(typ=("at+jwt",))  # even when the header says at+jwt
    assert await reason(strict, mint(key, {"typ": "at+jwt"}, **claims)) == "token_not_access_token"


async def test_access_token_payload_markers_pass(make: Make, key: DevKey) -> None:
    provider = await make()
    token = mint(key, typ="Bearer", token_use="access", client_id="c1")
    assert await provider.authenticate(request(token)) is not None


# -- duplicate member names --------------------------------------------------------------


def payload_text(**over: Any) -> str:
    claims = {"iss": ISSUER, "sub": "alice", "aud": "api", "iat": int(T0), "exp": int(T0) + 60}
    claims.update(over)
    return json.dumps(claims)[:-1]


async def test_duplicate_claim_is_refused(make: Make, key: DevKey) -> None:
    provider = await make()
    header = json.dumps({"alg": "ES256", "kid": key.kid}).encode()
    good = (payload_text() + "}").encode()
    assert await provider.authenticate(request(sign_raw(key, header, good))) is not None
    # The issuer and a last-one-wins reader would disagree on who this is.
    twice = (payload_text() + ', "sub": "admin"}').encode()
    assert await reason(provider, sign_raw(key, header, twice)) == "token_duplicate_member"
    nested = (payload_text() + ', "cnf": {"jkt": "a", "jkt": "b"}}').encode()
    assert await reason(provider, sign_raw(key, header, nested)) == "token_duplicate_member"


async def test_duplicate_header_member_is_refused(make: Make, key: DevKey) -> None:
    provider = await make()
    header = f'{{"alg": "ES256", "kid": "{key.kid}", "alg": "none"}}'.encode()
    payload = (payload_text() + "}").encode()
    assert await reason(provider, sign_raw(key, header, payload)) == "token_duplicate_member"


def test_one_reader_for_tokens_and_bodies() -> None:
    from authz.validation import jsonbody

    assert jsonbody._DECODER is strictjson.DECODER
    with pytest.raises(strictjson.DuplicateMember):
        strictjson.loads('{"a": 1, "a": 2}')
    with pytest.raises(ValueError):
        strictjson.loads('{"a": NaN}')


# -- registered claim types ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", True),
        ("exp", str(int(T0) + 60)),
        ("nbf", False),
        ("nbf", "0"),
        ("iat", [int(T0)]),
        ("aud", 5),
        ("aud", ["api", 5]),
        ("aud", {"api": True}),
        ("iss", [ISSUER]),
        ("sub", 42),
        ("sub", ["alice"]),
        ("jti", 1),
        ("scope", ["read"]),  # scope_claim: scope wants a space-delimited string
    ],
)
async def test_wrong_claim_type_is_refused(make: Make, key: DevKey, claim: str, value: Any) -> None:
    provider = await make()
    claims = {"iss": ISSUER, "sub": "alice", "aud": "api", "iat": int(T0), "exp": int(T0) + 60}
    claims[claim] = value
    header = json.dumps({"alg": "ES256", "kid": key.kid}).encode()
    token = sign_raw(key, header, json.dumps(claims).encode())
    assert await reason(provider, token) == "token_claim_type"


async def test_scp_must_be_an_array_of_strings(make: Make, key: DevKey) -> None:
    provider = await make(scope_claim="scp")
    ok = await provider.authenticate(request(mint(key, scope=None, scp=["a", "b"])))
    assert ok is not None and ok.scopes == {"a", "b"}
    for bad in ("a b", ["a", 1], {"a": 1}):
        assert await reason(provider, mint(key, scope=None, scp=bad)) == "token_claim_type"


async def test_strictness_holds_on_cache_hits(make: Make, key: DevKey) -> None:
    """Only a token that passed every check enters the cache (the key is the whole
    token), so the strict answer is the same the second time, and it is not cached."""
    provider = await make()
    bad = mint(key, sub=42)
    assert await reason(provider, bad) == "token_claim_type"
    assert await reason(provider, bad) == "token_claim_type"
    assert provider.cached == 0
    good = mint(key)
    assert await provider.authenticate(request(good)) is not None
    assert provider.authenticate_now(request(good)) is not None  # answered from the cache
    assert provider.cache_hits == 1


# -- the policy options ---------------------------------------------------------------------


def _policy(tmp_path: Path, provider: str, extra: str = "") -> Any:
    from authz.policy.loader import load_policy

    (tmp_path / "jwks.json").write_text('{"keys": []}')
    path = tmp_path / "policy.yaml"
    path.write_text(
        "providers:\n"
        f"  corp: {{type: jwt, issuer: https://i, audiences: [a], jwks_file: jwks.json, {provider}}}\n"
        "routes:\n"
        "  - {name: r, path: /r, methods: [GET], providers: [corp], sender_constrained: true}\n"
        + extra
    )
    return load_policy(path)


def test_policy_options_load(tmp_path: Path) -> None:
    from authz.policy.config import DpopConfig

    extra = "rate_limits:\n  stores:\n    shared: {type: redis, url: 'redis://127.0.0.1:1'}\n"
    policy = _policy(
        tmp_path,
        "typ: [Application/AT+JWT], dpop: required, dpop_iat_window: 30s, dpop_replay_store: shared",
        extra,
    )
    (corp,) = policy.providers
    assert corp.typ == ("at+jwt",)
    assert corp.dpop == DpopConfig(mode="required", iat_window=30.0, replay_store="shared")
    assert policy.routes[0].sender_constrained is True


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ("dpop: sometimes", "dpop"),
        ("dpop: allowed, dpop_replay_store: nowhere", "no Redis store named 'nowhere'"),
        ("typ: []", "typ"),
    ],
)
def test_policy_options_refused(tmp_path: Path, provider: str, message: str) -> None:
    from authz.errors import PolicyError

    with pytest.raises(PolicyError) as err:
        _policy(tmp_path, provider)
    assert message in str(err.value)


def test_http_checks_carry_the_dpop_proof_only_when_a_provider_takes_it(tmp_path: Path) -> None:
    from authz.envoyconf.extauthz import http_check_headers

    assert "dpop" in http_check_headers(_policy(tmp_path, "dpop: allowed"))
    assert "dpop" not in http_check_headers(_policy(tmp_path, "leeway: 5s"))
