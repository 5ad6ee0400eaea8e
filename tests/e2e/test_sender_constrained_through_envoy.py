"""Sender-constrained tokens end to end, through a real Envoy on both transports:
RFC 8705 certificate-bound tokens (right certificate, another one, none) and RFC 9449
DPoP (a valid proof, a replayed one, one for another method or URL, a token whose
``jkt`` is another key's), plus a route that requires a bound token."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz import devissuer
from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from authz.envoyconf import TlsOptions
from tests.certs import EVIL, PROMETHEUS, MtlsPki, make_mtls_pki
from tests.dpop_support import jkt, proof, x5t

pytestmark = pytest.mark.e2e

ISSUER = "https://corp.example"
KEY = devissuer.generate_key("ES256")
CLIENT = devissuer.generate_key("ES256")  # the DPoP key of the client
THIEF = devissuer.generate_key("ES256")

POLICY = """\
providers:
  corp: {type: jwt, issuer: "https://corp.example", audiences: [orders], algorithms: [ES256], jwks_file: "@JWKS@", dpop: allowed}
routes:
  - {name: orders, path: /v1/orders, methods: [GET, POST], providers: [corp]}
  - {name: bound-only, path: /v1/payments, methods: [GET], providers: [corp], sender_constrained: true}
"""


class Env:
    def __init__(self, stack: LocalStack, pki: MtlsPki) -> None:
        self.stack = stack
        self.pki = pki

    def context(self, spiffe_id: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.pki.ca.cert)
        if spiffe_id is not None:
            client = self.pki.clients[spiffe_id]
            ctx.load_cert_chain(client.cert, client.key)
        return ctx

    def url(self, path: str) -> str:
        return self.stack.base_url + path

    def call(
        self, path: str, headers: dict[str, str], *, cert: str | None = None, method: str = "GET"
    ) -> tuple[int, dict[str, str], str]:
        body = b"{}" if method == "POST" else None
        status, reply, data = send(
            method, self.url(path), headers, body, context=self.context(cert)
        )
        try:
            reason = json.loads(data).get("error", "") if status != 200 else ""
        except ValueError:
            reason = ""
        return status, reply, reason


@pytest.fixture(scope="module", params=["grpc", "http"])
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp(f"bound-{request.param}")
    pki = make_mtls_pki(tmp / "pki", (PROMETHEUS, EVIL))
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(devissuer.jwks([KEY])))
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.replace("@JWKS@", str(jwks)))
    # client certificates verified when sent, not required (the "no certificate" case)
    tls = TlsOptions(
        pki.server.cert, pki.server.key, client_ca=pki.ca.cert, require_client_cert=False
    )
    stack = LocalStack(
        policy=policy, state_dir=Path(tmp / "state"), tls=tls, transport=request.param
    )
    try:
        stack.start()
        yield Env(stack, pki)
    finally:
        stack.stop()


def token(**claims: object) -> str:
    return devissuer.mint(
        KEY, issuer=ISSUER, subject="alice", audience="orders", extra_claims=claims
    )


def test_certificate_bound_token(env: Env) -> None:
    pem = Path(env.pki.clients[PROMETHEUS].cert).read_text()
    bound = token(cnf={"x5t#S256": x5t(pem)})
    auth = {"authorization": f"Bearer {bound}"}
    assert env.call("/v1/orders", auth, cert=PROMETHEUS)[0] == 200
    assert env.call("/v1/orders", auth, cert=PROMETHEUS)[0] == 200  # cached, checked again
    assert env.call("/v1/payments", auth, cert=PROMETHEUS)[0] == 200
    status, headers, reason = env.call("/v1/orders", auth, cert=EVIL)  # another certificate
    assert (status, reason) == (401, "token_certificate_mismatch")
    assert headers["www-authenticate"].startswith("Bearer ")
    assert env.call("/v1/orders", auth, cert=None)[::2] == (401, "token_certificate_mismatch")


def test_a_spoofed_certificate_header_is_not_read(env: Env) -> None:
    pem = Path(env.pki.clients[PROMETHEUS].cert).read_text()
    bound = token(cnf={"x5t#S256": x5t(pem)})
    from urllib.parse import quote

    headers = {"authorization": f"Bearer {bound}", "x-authz-peer-certificate": quote(pem, safe="")}
    assert env.call("/v1/orders", headers, cert=None)[::2] == (401, "token_certificate_mismatch")


def test_dpop(env: Env) -> None:
    bound = token(cnf={"jkt": jkt(CLIENT)})
    url = env.url("/v1/orders")

    def dpop(p: str) -> dict[str, str]:
        return {"authorization": f"DPoP {bound}", "dpop": p}

    valid = proof(CLIENT, "GET", url, bound)
    assert env.call("/v1/orders", dpop(valid))[::2] == (200, "")
    # no credential: both ways in are named, DPoP with its algorithms (RFC 9449 7.1)
    status, headers, reason = env.call("/v1/orders", {})
    assert (status, reason) == (401, "missing_credential")
    assert headers["www-authenticate"].startswith(
        'Bearer realm="authz", DPoP realm="authz", algs="ES256'
    )
    status, headers, reason = env.call("/v1/orders", dpop(valid))  # replayed
    assert (status, reason) == (401, "dpop_proof_replayed")
    assert headers["www-authenticate"].startswith("DPoP ")
    assert 'error="invalid_dpop_proof"' in headers["www-authenticate"]
    # with the query string, a fresh proof for the same URL passes (htu has no query)
    assert env.call("/v1/orders?page=2", dpop(proof(CLIENT, "GET", url, bound)))[0] == 200
    for wrong in (
        proof(CLIENT, "POST", url, bound),  # another method
        proof(CLIENT, "GET", env.url("/v1/payments"), bound),  # another URL
    ):
        assert env.call("/v1/orders", dpop(wrong))[::2] == (401, "dpop_proof_invalid")
    post = proof(CLIENT, "POST", url, bound)
    assert env.call("/v1/orders", dpop(post), method="POST")[0] == 200
    # the token is bound to CLIENT's key, the proof signed by another
    stolen = proof(THIEF, "GET", url, bound)
    assert env.call("/v1/orders", dpop(stolen))[::2] == (401, "dpop_key_mismatch")
    # a DPoP-bound token presented as a bearer token
    bearer = {"authorization": f"Bearer {bound}"}
    assert env.call("/v1/orders", bearer)[::2] == (401, "dpop_key_mismatch")
    # the bound-only route takes it with its proof
    pay = proof(CLIENT, "GET", env.url("/v1/payments"), bound)
    assert env.call("/v1/payments", dpop(pay))[0] == 200


def test_route_requires_a_sender_constrained_token(env: Env) -> None:
    plain = {"authorization": f"Bearer {token()}"}
    assert env.call("/v1/orders", plain)[0] == 200
    assert env.call("/v1/payments", plain)[::2] == (401, "token_not_sender_constrained")
