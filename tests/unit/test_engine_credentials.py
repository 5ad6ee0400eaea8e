"""Golden table for routes with several providers: one credential per request.

A request that carries credentials of two kinds (a JWT and an API key, a header
token and an ``access_token`` query parameter) is ``multiple_credentials`` on an
``exclusive`` route (the default), before any of them is verified; the mTLS peer
identity is a property of the connection and never counts. ``credentials:
first_match`` keeps the old rule (the first provider whose credential is present
decides) for a migration. Same machinery as test_engine_golden.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from authz import devissuer
from authz.engine import CompiledPolicy, PolicyEngine
from authz.errors import AuthzError
from authz.identity.api_key import ApiKeyProvider
from authz.identity.jwt import JwtProvider
from authz.identity.mtls import MtlsProvider
from authz.model import Request
from authz.policy.config import ApiKeyProviderConfig, JwtProviderConfig, MtlsProviderConfig
from authz.policy.loader import load_policy
from tests.unit.test_engine_golden import (
    CHALLENGE_INVALID,
    CHALLENGE_MISSING,
    NOW,
    PROMETHEUS,
    READER,
    api,
    check_response,
    run,
    sha,
)

CORP = "https://corp.example"
PARTNER = "https://partner.example"
KEY = devissuer.generate_key("ES256")
PARTNER_KEY = devissuer.generate_key("ES256")
MULTIPLE = 'Bearer realm="shop", error="invalid_request"'

POLICY = """\
version: 1
realm: shop
providers:
  corp: {{type: jwt, issuer: "{corp}", audiences: [shop], algorithms: [ES256], jwks_file: {jwks}}}
  partner: {{type: jwt, issuer: "{partner}", audiences: [shop], algorithms: [ES256], jwks_file: {partner_jwks}}}
  keys:
    type: api_key
    keys:
      - {{id: reader, sha256: {digest}, owner: reporting-team, scopes: [orders:read], expires: "2030-01-01"}}
  mesh: {{type: mtls, trust_domains: [td.local]}}
routes:
  - {{name: orders, path: /orders, methods: [GET], providers: [corp, keys], scopes: [orders:read]}}
  - {{name: keys-first, path: /keys-first, methods: [GET], providers: [keys, corp]}}
  - {{name: migrate, path: /migrate, methods: [GET], providers: [corp, keys], scopes: [orders:read], credentials: first_match}}
  - {{name: issuers, path: /issuers, methods: [GET], providers: [corp, partner]}}
  - {{name: workload, path: /workload, methods: [GET], providers: [mesh, corp]}}
  - {{name: workload-old, path: /workload-old, methods: [GET], providers: [mesh, corp], credentials: first_match}}
  - {{name: three, path: /three, methods: [GET], providers: [mesh, corp, keys]}}
  - {{name: single, path: /single, methods: [GET], providers: [corp]}}
"""


def token(scopes: str = "orders:read", *, key: devissuer.DevKey = KEY, issuer: str = CORP) -> str:
    return devissuer.mint(key, issuer=issuer, subject="alice", audience="shop", scopes=scopes, now=NOW)  # fmt: skip


def bearer(value: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}", **extra}


JWT = token()
JWT_ALLOWED = dict(status=200, reason="allowed", subject="alice", kind="jwt", scopes="orders:read", issuer=CORP)  # fmt: skip
KEY_ALLOWED = dict(status=200, reason="allowed", subject="reporting-team", kind="api_key", scopes="orders:read", issuer="keys")  # fmt: skip
MESH_ALLOWED = dict(status=200, reason="allowed", subject=PROMETHEUS, kind="mtls", scopes=None, issuer="spiffe://td.local")  # fmt: skip
MULTIPLE_DENIED = dict(status=401, reason="multiple_credentials", www=MULTIPLE)

CASES: list[dict[str, Any]] = [
    # --- exclusive (the default): two kinds of credential are refused before either is verified
    dict(name="jwt + bogus key", request=dict(path="/orders", headers=bearer(JWT, **api("bogus"))), expected=MULTIPLE_DENIED),
    dict(name="jwt + valid key", request=dict(path="/orders", headers=bearer(JWT, **api(READER))), expected=MULTIPLE_DENIED),
    dict(name="bogus jwt + valid key", request=dict(path="/orders", headers=bearer("x.y.z", **api(READER))), expected=MULTIPLE_DENIED),
    dict(name="key route first: valid key + bogus jwt", request=dict(path="/keys-first", headers=bearer("x.y.z", **api(READER))), expected=MULTIPLE_DENIED),
    dict(name="jwt + empty key header", request=dict(path="/orders", headers=bearer(JWT, **api(""))), expected=MULTIPLE_DENIED),
    dict(name="key + access_token query", request=dict(path=f"/orders?access_token={JWT}", headers=api(READER)), expected=MULTIPLE_DENIED),
    dict(name="key + lone 'Bearer'", request=dict(path="/orders", headers={"authorization": "Bearer", **api(READER)}), expected=MULTIPLE_DENIED),
    dict(name="jwt alone", request=dict(path="/orders", headers=bearer(JWT)), expected=JWT_ALLOWED),
    dict(name="key alone", request=dict(path="/orders", headers=api(READER)), expected=KEY_ALLOWED),
    dict(name="bogus key alone", request=dict(path="/orders", headers=api("bogus")), expected=dict(status=401, reason="api_key_unknown", www=CHALLENGE_INVALID)),
    dict(name="nothing", request=dict(path="/orders"), expected=dict(status=401, reason="missing_credential", www=CHALLENGE_MISSING)),
    # another scheme on the shared authorization header is not a credential any provider reads
    dict(name="key + basic auth", request=dict(path="/orders", headers={"authorization": "Basic dTpw", **api(READER)}), expected=KEY_ALLOWED),
    # two issuers reading one header: one credential, not two
    dict(name="two issuers, one header", request=dict(path="/issuers", headers=bearer(JWT)), expected=dict(JWT_ALLOWED, scopes="orders:read")),
    # --- first_match: the documented migration (old API key and new JWT sent together)
    dict(name="first_match: jwt + bogus key", request=dict(path="/migrate", headers=bearer(JWT, **api("bogus"))), expected=JWT_ALLOWED),
    dict(name="first_match: jwt + valid key", request=dict(path="/migrate", headers=bearer(JWT, **api(READER))), expected=JWT_ALLOWED),
    dict(name="first_match: key alone", request=dict(path="/migrate", headers=api(READER)), expected=KEY_ALLOWED),
    # --- mTLS is the connection's identity: the request's credential decides when there is one
    dict(name="mtls + jwt: jwt decides", request=dict(path="/workload", principal=PROMETHEUS, headers=bearer(JWT)), expected=JWT_ALLOWED),
    dict(name="mtls + bogus jwt: refused, not ignored", request=dict(path="/workload", principal=PROMETHEUS, headers=bearer("x.y.z")), expected=dict(status=401, reason="token_malformed", www=CHALLENGE_INVALID)),
    dict(name="mtls alone", request=dict(path="/workload", principal=PROMETHEUS), expected=MESH_ALLOWED),
    dict(name="mtls + jwt + key", request=dict(path="/three", principal=PROMETHEUS, headers=bearer(JWT, **api(READER))), expected=MULTIPLE_DENIED),
    dict(name="mtls + key on three", request=dict(path="/three", principal=PROMETHEUS, headers=api(READER)), expected=KEY_ALLOWED),
    dict(name="first_match: mtls + bogus jwt: mtls decides", request=dict(path="/workload-old", principal=PROMETHEUS, headers=bearer("x.y.z")), expected=MESH_ALLOWED),
    # --- one provider: its own rules (two tokens) and nothing else
    dict(name="single provider ignores a key header", request=dict(path="/single", headers=bearer(JWT, **api("bogus"))), expected=dict(JWT_ALLOWED)),
    dict(name="single provider, two tokens", request=dict(path="/single", headers={"authorization": f"Bearer {JWT}, Bearer {JWT}"}), expected=MULTIPLE_DENIED),
]  # fmt: skip


def write_policy(tmp_path: Path) -> Path:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(devissuer.jwks([KEY])))
    partner = tmp_path / "partner.json"
    partner.write_text(json.dumps(devissuer.jwks([PARTNER_KEY])))
    path = tmp_path / "policy.yaml"
    path.write_text(
        POLICY.format(
            corp=CORP, partner=PARTNER, jwks=jwks, partner_jwks=partner, digest=sha(READER)
        )
    )
    return path


@pytest.fixture
async def engine(tmp_path: Path) -> PolicyEngine:
    policy = CompiledPolicy(load_policy(write_policy(tmp_path)), clock=lambda: NOW)
    await policy.start()
    counter = itertools.count(1)
    return PolicyEngine(policy, clock=lambda: NOW, id_factory=lambda: f"dec-{next(counter)}")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_credentials(engine: PolicyEngine, case: dict[str, Any]) -> None:
    check_response(await run(engine, dict(method="GET", **case["request"])), case["expected"])


async def test_multiple_credentials_verifies_nothing(engine: PolicyEngine) -> None:
    corp = engine.policy.providers["corp"]
    assert isinstance(corp, JwtProvider)
    before = corp.verifications
    check_response(await run(engine, dict(method="GET", path="/orders", headers=bearer(token("a"), **api("bogus")))), MULTIPLE_DENIED)  # fmt: skip
    assert corp.verifications == before


def test_only_routes_with_two_request_credentials_check(engine: PolicyEngine) -> None:
    plans = engine.policy.plans
    assert [p.name for p in plans["orders"].exclusive] == ["corp", "keys"]
    assert [p.name for p in plans["three"].exclusive] == ["corp", "keys"]
    for name in ("single", "workload", "migrate", "workload-old"):
        assert plans[name].exclusive == ()
    # exclusive asks the connection's identity last; first_match keeps route order
    assert [p.name for p in plans["workload"].providers] == ["corp", "mesh"]
    assert [p.name for p in plans["workload-old"].providers] == ["mesh", "corp"]


# --------------------------------------------------------------- presented() vs authenticate()

HEADER_VALUES = [
    "", " ", ",", " , ", "Bearer", "bearer", "BEARER x", "Bearer x", "Bearer x y", "Bearerx",
    "Basic dTpw", "Basic a, Bearer b", "Basic a, Basic b", "Bearer a,", ", Bearer a",
    "Bearer a, Bearer b", "x", "\tBearer\tx", "Bearer\u00a0x", "Token x", "a.b.c",
]  # fmt: skip
#: (path, whether it has an access_token query parameter)
PATHS = [("/p", False), ("/p?access_token=x", True), ("/p?access%5Ftoken=x", True), ("/p?a=1&access_token", True), ("/p?x=access_token", False)]  # fmt: skip


async def _abstains(provider: Any, request: Request) -> bool:
    try:
        return await provider.authenticate(request) is None
    except AuthzError:
        return False


def _request(headers: dict[str, str], path: str = "/p", principal: str = "") -> Request:
    return Request(method="GET", path=path, host="h", headers=headers, principal=principal)


@pytest.mark.parametrize("header", ["authorization", "x-token"])
async def test_jwt_presented_whenever_authenticate_would_not_abstain(
    tmp_path: Path, header: str
) -> None:
    """No false negatives: a credential the provider would act on is always counted."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(devissuer.jwks([KEY])))
    config = JwtProviderConfig(
        name="corp", issuer=CORP, audiences=("shop",), jwks_file=str(jwks), header=header
    )
    provider = JwtProvider(config, clock=lambda: NOW)
    await provider.start()
    for value in [*HEADER_VALUES, None]:
        headers = {} if value is None else {header: value}
        in_header = not await _abstains(provider, _request(headers))
        for path, query in PATHS:
            request = _request(headers, path)
            expected = f"header:{header}" if in_header else "query:access_token" if query else None
            assert provider.presented(request) == expected, (value, path)
            # the query parameter alone is counted, though never accepted there
            assert await _abstains(provider, request) == (not in_header), (value, path)
    await provider.aclose()


async def test_api_key_and_mtls_presented() -> None:
    keys = ApiKeyProvider(ApiKeyProviderConfig(name="k"))
    for value in ["", " ", "x", "a,b"]:
        request = _request({"x-api-key": value})
        assert keys.presented(request) == "header:x-api-key"
        assert not await _abstains(keys, request)
    assert keys.presented(_request({})) is None
    assert keys.connection_credential is False
    mesh = MtlsProvider(MtlsProviderConfig(name="m", trust_domains=("td.local",)))
    assert mesh.connection_credential is True
    assert mesh.presented(_request({}, principal=PROMETHEUS)) == "connection"
    assert mesh.presented(_request({})) is None
