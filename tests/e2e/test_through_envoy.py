"""End to end: real HTTP through a real Envoy to the real service and an echo upstream.

Every deny reason of the foundation issue is sent here as a real request; the
table DENY_CASES is the one in the issue note (status through Envoy, reason).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from authz import devissuer
from authz.demo.stack import LocalStack
from authz.demo.stack import http as send

pytestmark = pytest.mark.e2e

API_KEY = "e2e-key-0123456789abcdef"
EXPIRED_KEY = "e2e-expired-key-0123456789"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


POLICY = """\
mode: enforce
undeclared_routes: deny
realm: orders
providers:
  dev:
    type: jwt
    issuer: {issuer}
    audiences: [orders]
    algorithms: [ES256]
    max_lifetime: 1h
    leeway: 5s
    jwks_refresh_interval: 1s
  flaky:
    type: jwt
    issuer: {flaky_issuer}
    audiences: [orders]
    algorithms: [ES256]
    jwks_timeout: 0.2s
    jwks_ttl: 0.2s
    jwks_refresh_interval: 0.2s
    jwks_stale_ttl: 1s
  mesh: {{type: mtls, trust_domains: [demo.local]}}
  legacy:
    type: api_key
    header: x-api-key
    keys:
      - {{id: e2e, sha256: {key_digest}, owner: reporting, scopes: [orders:read], expires: "2999-01-01"}}
      - {{id: old, sha256: {expired_digest}, owner: retired, scopes: [orders:read], expires: "2001-01-01"}}
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [dev, legacy], scopes: [orders:read]}}
  - {{name: create-order, path: /v1/orders, methods: [POST], providers: [dev], scopes: [orders:write], strip_credential: true}}
  - {{name: export, path: /v1/orders/export, methods: [GET], providers: [dev], scopes: [orders:read], claims: {{tenant: acme}}}}
  - {{name: legacy-report, path: /v1/reports, methods: [GET], providers: [flaky]}}
  - {{name: preview, path: /v1/preview, methods: [GET], providers: [dev], scopes: [preview], mode: monitor}}
  - {{name: mesh-only, path: /v1/mesh, methods: [GET], providers: [mesh]}}
  - {{name: migrating, path: /v1/migrating, methods: [GET], providers: [dev, legacy], credentials: first_match}}
"""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        (_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature))
    )


class Env:
    def __init__(
        self,
        stack: LocalStack,
        key: devissuer.DevKey,
        issuer_url: str,
        flaky: devissuer.DevIssuerServer,
    ) -> None:
        self.flaky = flaky
        self.stack = stack
        self.key = key
        self.issuer = issuer_url

    def token(self, scopes: str = "orders:read", **kw: Any) -> str:
        kw.setdefault("audience", "orders")
        kw.setdefault("subject", "alice")
        return devissuer.mint(self.key, issuer=self.issuer, scopes=scopes, **kw)

    def claims(self, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": "orders",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "scope": "orders:read",
        }
        claims.update(over)
        return claims

    def get(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        return send(method, self.stack.base_url + path, headers, body)


@pytest.fixture(scope="module", params=["grpc", "http"])
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Env]:
    """The whole stack, once per transport Envoy can use to call the service."""
    tmp = tmp_path_factory.mktemp(f"e2e-{request.param}")
    key = devissuer.generate_key("ES256")
    issuer = devissuer.DevIssuerServer([key]).start()
    flaky = devissuer.DevIssuerServer([key]).start()
    policy = tmp / "policy.yaml"
    policy.write_text(
        POLICY.format(
            issuer=issuer.url,
            flaky_issuer=flaky.url,
            key_digest=_digest(API_KEY),
            expired_digest=_digest(EXPIRED_KEY),
        )
    )
    stack = LocalStack(policy=policy, state_dir=tmp / "state", transport=request.param)
    try:
        stack.start()
        yield Env(stack, key, issuer.url, flaky)
    finally:
        stack.stop()
        issuer.stop()
        flaky.stop()


def _hs256_with_public_key(env: Env) -> str:
    pem = env.key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": env.key.kid}).encode())
    body = _b64(json.dumps(env.claims()).encode())
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def _tampered(env: Env) -> str:
    head, _, sig = env.token().split(".")
    body = _b64(json.dumps(env.claims(scope="orders:read orders:write")).encode())
    return f"{head}.{body}.{sig}"


def _after_outage(env: Env) -> str:
    """The flaky issuer goes down; its last good keys are kept only for jwks_stale_ttl."""
    env.flaky.unavailable = True
    time.sleep(1.5)
    return devissuer.mint(env.key, issuer=env.flaky.url, subject="x", audience="orders")


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# (name, status through Envoy, reason, request builder)
Case = tuple[str, int, str, Callable[[Env], tuple[str, str, dict[str, str]]]]
DENY_CASES: list[Case] = [
    ("undeclared route", 404, "undeclared_route", lambda e: ("GET", "/v1/admin/users", {})),
    ("method not allowed", 405, "method_not_allowed", lambda e: ("DELETE", "/v1/orders/1", {})),
    ("invalid UTF-8 in path", 400, "invalid_path", lambda e: ("GET", "/v1/orders/%C3", {})),
    ("overlong UTF-8 '/' in path", 400, "invalid_path", lambda e: ("GET", "/v1/orders/%C0%AF", {})),
    ("encoded control character", 400, "invalid_path", lambda e: ("GET", "/v1/orders/%7F", {})),
    ("missing credential", 401, "missing_credential", lambda e: ("GET", "/v1/orders/1", {})),
    (
        "two tokens",
        401,
        "multiple_credentials",
        lambda e: (
            "GET",
            "/v1/orders/1",
            {"authorization": f"Bearer {e.token()}, Bearer {e.token()}"},
        ),
    ),
    (
        "JWT and a bogus API key",
        401,
        "multiple_credentials",
        lambda e: ("GET", "/v1/orders/1", {**_bearer(e.token()), "x-api-key": "bogus"}),
    ),
    (
        "API key and an access_token query parameter",
        401,
        "multiple_credentials",
        lambda e: ("GET", f"/v1/orders/1?access_token={e.token()}", {"x-api-key": API_KEY}),
    ),
    (
        "malformed token",
        401,
        "token_malformed",
        lambda e: ("GET", "/v1/orders/1", _bearer("not.a.jwt")),
    ),
    (
        "alg none",
        401,
        "token_algorithm_not_allowed",
        lambda e: ("GET", "/v1/orders/1", _bearer(_unsigned({"alg": "none"}, e.claims()))),
    ),
    (
        "HS256 signed with the public key",
        401,
        "token_algorithm_not_allowed",
        lambda e: ("GET", "/v1/orders/1", _bearer(_hs256_with_public_key(e))),
    ),
    (
        "jku header",
        401,
        "token_header_forbidden",
        lambda e: (
            "GET",
            "/v1/orders/1",
            _bearer(e.token(headers={"jku": "http://127.0.0.1:1/keys"})),
        ),
    ),
    (
        "embedded jwk header",
        401,
        "token_header_forbidden",
        lambda e: ("GET", "/v1/orders/1", _bearer(e.token(headers={"jwk": e.key.public_jwk()}))),
    ),
    (
        "crit header",
        401,
        "token_header_forbidden",
        lambda e: ("GET", "/v1/orders/1", _bearer(e.token(headers={"crit": ["exp"]}))),
    ),
    (
        "unknown kid",
        401,
        "token_unknown_kid",
        lambda e: (
            "GET",
            "/v1/orders/1",
            _bearer(
                devissuer.mint(
                    devissuer.generate_key("ES256"),
                    issuer=e.issuer,
                    subject="x",
                    audience="orders",
                    scopes="orders:read",
                )
            ),
        ),
    ),
    (
        "bad signature",
        401,
        "token_bad_signature",
        lambda e: ("GET", "/v1/orders/1", _bearer(_tampered(e))),
    ),
    (
        "wrong issuer",
        401,
        "token_wrong_issuer",
        lambda e: ("GET", "/v1/orders/1", _bearer(e.token(extra_claims={"iss": "https://evil"}))),
    ),
    (
        "wrong audience",
        401,
        "token_wrong_audience",
        lambda e: ("GET", "/v1/orders/1", _bearer(e.token(audience="billing"))),
    ),
    (
        "expired",
        401,
        "token_expired",
        lambda e: ("GET", "/v1/orders/1", _bearer(e.token(now=time.time() - 400, ttl=300))),
    ),
    (
        "not yet valid",
        401,
        "token_not_yet_valid",
        lambda e: ("GET", "/v1/orders/1", _bearer(e.token(now=time.time() + 600))),
    ),
    (
        "missing exp",
        401,
        "token_missing_exp",
        lambda e: ("GET", "/v1/orders/1", _bearer(e.token(extra_claims={"exp": None}))),
    ),
    (
        "lifetime too long",
        401,
        "token_lifetime_too_long",
        lambda e: ("GET", "/v1/orders/1", _bearer(e.token(ttl=86400))),
    ),
    (
        "unknown API key",
        401,
        "api_key_unknown",
        lambda e: ("GET", "/v1/orders/1", {"x-api-key": "guessed-key"}),
    ),
    (
        "expired API key",
        401,
        "api_key_expired",
        lambda e: ("GET", "/v1/orders/1", {"x-api-key": EXPIRED_KEY}),
    ),
    (
        "insufficient scope",
        403,
        "insufficient_scope",
        lambda e: ("POST", "/v1/orders", _bearer(e.token("orders:read"))),
    ),
    (
        "scope is matched exactly",
        403,
        "insufficient_scope",
        lambda e: ("POST", "/v1/orders", _bearer(e.token("orders:writer orders:*"))),
    ),
    (
        "claim mismatch",
        403,
        "claim_mismatch",
        lambda e: ("GET", "/v1/orders/export", _bearer(e.token(extra_claims={"tenant": "globex"}))),
    ),
    (
        "issuer unreachable past the stale-key limit",
        503,
        "jwks_unavailable",
        lambda e: ("GET", "/v1/reports", _bearer(_after_outage(e))),
    ),
]


@pytest.mark.parametrize("case", DENY_CASES, ids=[c[0] for c in DENY_CASES])
def test_deny(env: Env, case: Case) -> None:
    _, status, reason, build = case
    method, path, headers = build(env)
    got, resp_headers, body = env.get(
        path, headers, method=method, body=b"{}" if method == "POST" else None
    )
    assert got == status, body
    payload = json.loads(body)
    assert payload["error"] == reason
    assert set(payload) == {"error", "request_id"}
    assert payload["request_id"]
    assert resp_headers["content-type"] == "application/json"
    if status == 401:
        challenge = resp_headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="orders"')
        if reason == "missing_credential":
            assert "error=" not in challenge
        elif reason != "multiple_credentials":
            assert 'error="invalid_token"' in challenge
    if reason == "insufficient_scope":
        assert resp_headers["www-authenticate"] == (
            'Bearer realm="orders", error="insufficient_scope", scope="orders:write"'
        )
    if status == 405:
        assert resp_headers["allow"] == "GET"


def test_allow_sets_identity_headers_and_drops_spoofed_ones(env: Env) -> None:
    status, _, body = env.get(
        "/v1/orders/42",
        {
            **_bearer(env.token("orders:read orders:audit")),
            "x-authz-subject": "admin",
            "x-authz-identity-type": "mtls",
            "x-authz-scopes": "orders:write",
            "x-forwarded-client-cert": "By=spiffe://x;URI=spiffe://x",
        },
    )
    assert status == 200
    seen = json.loads(body)["headers"]
    assert seen["x-authz-subject"] == "alice"
    assert seen["x-authz-identity-type"] == "jwt"
    assert seen["x-authz-scopes"] == "orders:audit orders:read"
    assert seen["x-authz-issuer"] == env.issuer
    assert seen["x-authz-provider"] == "dev"
    assert "x-forwarded-client-cert" not in seen
    assert seen["authorization"].startswith("Bearer ")  # not stripped on this route


def test_spoofed_identity_headers_never_reach_upstream_on_public_route(env: Env) -> None:
    status, _, body = env.get(
        "/healthz", {"x-authz-subject": "admin", "x-authz-scopes": "orders:write"}
    )
    assert status == 200
    seen = json.loads(body)["headers"]
    assert "x-authz-subject" not in seen
    assert "x-authz-scopes" not in seen


def test_peer_identity_cannot_be_sent_by_the_client(env: Env) -> None:
    # Plaintext, no client certificate: there is no peer identity, whatever headers
    # claim one (the HTTP transport's trusted headers are set only by Envoy).
    status, _, body = env.get(
        "/v1/mesh",
        {
            "x-authz-peer-principal": "spiffe://demo.local/ns/ops/sa/prometheus",
            "x-authz-source-address": "10.0.0.1",
        },
    )
    assert status == 401
    assert json.loads(body)["error"] == "missing_credential"


def test_transport_secret_is_envoys_alone(env: Env) -> None:
    # Over HTTP the stack runs with a transport secret that only Envoy's config sends:
    # a client's copy (right or wrong) neither helps nor hurts, and Envoy's own never
    # reaches the upstream.
    assert (env.stack.http_secret is not None) == (env.stack.transport == "http")
    for sent in ({}, {"x-authz-transport-secret": "wrong"}):
        status, _, body = env.get("/v1/orders/7", {"x-api-key": API_KEY, **sent})
        assert status == 200
        seen = json.loads(body)["headers"]
        assert seen.get("x-authz-transport-secret") == sent.get("x-authz-transport-secret")
        if env.stack.http_secret is not None:
            assert env.stack.http_secret not in body.decode()


def test_api_key_identity_and_strip_credential(env: Env) -> None:
    status, _, body = env.get("/v1/orders/7", {"x-api-key": API_KEY})
    assert status == 200
    seen = json.loads(body)["headers"]
    assert seen["x-authz-subject"] == "reporting"
    assert seen["x-authz-identity-type"] == "api_key"
    status, _, body = env.get(
        "/v1/orders", _bearer(env.token("orders:write")), method="POST", body=b"{}"
    )
    assert status == 200
    assert "authorization" not in json.loads(body)["headers"]  # strip_credential


def test_one_credential_per_request_unless_the_route_opts_out(env: Env) -> None:
    # The JWT alone is allowed; with a bogus API key beside it, refused (above);
    # on a first_match route (a migration) the first provider whose credential is
    # present decides, as before.
    status, _, body = env.get("/v1/orders/1", _bearer(env.token()))
    assert status == 200
    assert json.loads(body)["headers"]["x-authz-identity-type"] == "jwt"
    status, _, body = env.get("/v1/migrating", {**_bearer(env.token()), "x-api-key": "bogus"})
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert (seen["x-authz-subject"], seen["x-authz-identity-type"]) == ("alice", "jwt")
    status, _, body = env.get("/v1/migrating", {"x-api-key": API_KEY})
    assert status == 200
    assert json.loads(body)["headers"]["x-authz-identity-type"] == "api_key"


def test_monitor_route_allows_and_logs_the_true_decision(env: Env) -> None:
    status, _, _ = env.get("/v1/preview", _bearer(env.token("orders:read")))
    assert status == 200
    deadline = time.time() + 5
    while time.time() < deadline:
        records = [json.loads(x) for x in env.stack.decision_log.read_text().splitlines()]
        hits = [r for r in records if r["route"] == "preview"]
        if hits:
            break
        time.sleep(0.05)
    assert hits[-1]["decision"] == "monitor"
    assert hits[-1]["reason"] == "insufficient_scope"
    assert hits[-1]["status"] == 403


def test_decision_log_has_every_field_and_no_secrets(env: Env) -> None:
    token = env.token()
    env.get(f"/v1/orders/1?access_token={token}", {"x-api-key": "leaked-secret-value"})
    time.sleep(0.5)
    text = env.stack.decision_log.read_text()
    assert token not in text
    assert "leaked-secret-value" not in text
    record = json.loads(text.splitlines()[-1])
    for field in (
        "time",
        "request_id",
        "decision_id",
        "route",
        "method",
        "path",
        "identity_type",
        "subject",
        "issuer",
        "decision",
        "status",
        "reason",
        "policy_version",
        "latency_ms",
    ):
        assert field in record


def test_envoy_rejects_what_it_cannot_route_safely(env: Env) -> None:
    # Envoy itself answers these (escaped slash, underscore header) before the service.
    conn = http.client.HTTPConnection("127.0.0.1", env.stack.listen_port, timeout=5)
    conn.request("GET", "/v1/orders/a%2Fb")
    assert conn.getresponse().status == 400
    conn.close()
    status, _, _ = env.get("/v1/orders/1", {"x_authz_subject": "admin"})
    assert status == 400


@pytest.mark.parametrize(
    "raw", ["/v1//orders/./x/../42", "/v1/orders/%2e%2e/orders/42", "/v1/%6Frders/42"]
)
def test_path_normalisation_agrees_with_envoy(env: Env, raw: str) -> None:
    # Envoy resolves dot segments (encoded ones too), merges slashes and decodes
    # unreserved escapes; the service routes the result, and the upstream sees the
    # same path the decision was made on.
    conn = http.client.HTTPConnection("127.0.0.1", env.stack.listen_port, timeout=5)
    conn.request("GET", raw, headers=_bearer(env.token()))
    reply = conn.getresponse()
    body = json.loads(reply.read())
    assert reply.status == 200
    assert body["path"] == "/v1/orders/42"
    conn.close()


def deny_table() -> list[tuple[str, int, str]]:
    """The table for the issue note: case, status through Envoy, reason."""
    return [(name, status, reason) for name, status, reason, _ in DENY_CASES]
