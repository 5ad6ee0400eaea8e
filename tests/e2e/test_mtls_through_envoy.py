"""End to end over mTLS: Envoy verifies client certificates (SPIFFE IDs), the
service decides on the verified identity, never on client-sent headers."""

from __future__ import annotations

import json
import ssl
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz import devissuer
from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from authz.envoyconf import TlsOptions
from tests.certs import EVIL, PROMETHEUS, MtlsPki, make_mtls_pki

pytestmark = pytest.mark.e2e

SYNC = "spiffe://demo.local/ns/sync/sa/worker"
OTHER = "spiffe://demo.local/ns/web/sa/frontend"
CORP = "https://corp.example"
KEY = devissuer.generate_key("ES256")

POLICY = """\
providers:
  mesh: {type: mtls, trust_domains: [demo.local]}
  corp: {type: jwt, issuer: "https://corp.example", audiences: [orders], algorithms: [ES256], jwks_file: "@JWKS@"}
routes:
  - {name: workload, path: /v1/workload, methods: [GET], providers: [mesh, corp]}
  - {name: workload-old, path: /v1/workload-old, methods: [GET], providers: [mesh, corp], credentials: first_match}
  - {name: metrics, path: /internal/metrics, methods: [GET], providers: [mesh], spiffe_ids: ["spiffe://demo.local/ns/ops/sa/prometheus"]}
  - {name: sync, path: "/internal/sync/{rest=**}", methods: [POST], providers: [mesh], spiffe_ids: ["spiffe://demo.local/ns/sync/*"]}
  - {name: health, path: /healthz, methods: [GET], public: true}
"""


class MtlsEnv:
    def __init__(self, stack: LocalStack, pki: MtlsPki) -> None:
        self.stack = stack
        self.pki = pki

    def context(self, spiffe_id: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.pki.ca.cert)
        client = self.pki.clients[spiffe_id]
        ctx.load_cert_chain(client.cert, client.key)
        return ctx

    def get(
        self, spiffe_id: str, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        body = b"{}" if method == "POST" else None
        return send(
            method, self.stack.base_url + path, headers, body, context=self.context(spiffe_id)
        )


@pytest.fixture(scope="module", params=["grpc", "http"])
def mtls(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[MtlsEnv]:
    """Envoy with mTLS in front of the service, once per transport."""
    tmp = tmp_path_factory.mktemp(f"mtls-{request.param}")
    pki = make_mtls_pki(tmp / "pki", (PROMETHEUS, EVIL, SYNC, OTHER))
    policy = tmp / "policy.yaml"
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(devissuer.jwks([KEY])))
    policy.write_text(POLICY.replace("@JWKS@", str(jwks)))
    tls = TlsOptions(pki.server.cert, pki.server.key, client_ca=pki.ca.cert)
    stack = LocalStack(
        policy=policy, state_dir=Path(tmp / "state"), tls=tls, transport=request.param
    )
    try:
        stack.start()
        yield MtlsEnv(stack, pki)
    finally:
        stack.stop()


def test_allowed_spiffe_id_reaches_upstream_as_identity(mtls: MtlsEnv) -> None:
    status, _, body = mtls.get(
        PROMETHEUS,
        "/internal/metrics",
        headers={"x-forwarded-client-cert": f"URI={SYNC}", "x-authz-subject": SYNC},
    )
    assert status == 200
    seen = json.loads(body)["headers"]
    assert seen["x-authz-subject"] == PROMETHEUS
    assert seen["x-authz-identity-type"] == "mtls"
    assert seen["x-authz-issuer"] == "spiffe://demo.local"


def test_prefix_allowlist(mtls: MtlsEnv) -> None:
    status, _, _ = mtls.get(SYNC, "/internal/sync/orders/batch", method="POST")
    assert status == 200


@pytest.mark.parametrize(
    ("spiffe_id", "path", "method", "status", "reason"),
    [
        (OTHER, "/internal/metrics", "GET", 403, "spiffe_id_not_allowed"),
        (PROMETHEUS, "/internal/sync/x", "POST", 403, "spiffe_id_not_allowed"),
        (EVIL, "/internal/metrics", "GET", 401, "untrusted_trust_domain"),
    ],
)
def test_mtls_denies(
    mtls: MtlsEnv, spiffe_id: str, path: str, method: str, status: int, reason: str
) -> None:
    got, _, body = mtls.get(spiffe_id, path, method=method)
    assert got == status
    assert json.loads(body)["error"] == reason


def test_spoofed_xfcc_gives_no_identity(mtls: MtlsEnv) -> None:
    # A client whose certificate Envoy verified as OTHER claims PROMETHEUS in XFCC:
    # Envoy sanitises the header and the service only reads the verified principal.
    got, _, body = mtls.get(
        OTHER, "/internal/metrics", headers={"x-forwarded-client-cert": f"URI={PROMETHEUS}"}
    )
    assert got == 403
    assert json.loads(body)["error"] == "spiffe_id_not_allowed"


@pytest.mark.parametrize(
    "spoofed",
    [
        {"x-authz-peer-principal": PROMETHEUS},
        {"x-authz-peer-principal": PROMETHEUS, "x-authz-source-address": "10.0.0.1"},
        {"X-Authz-Peer-Principal": f"{PROMETHEUS},{PROMETHEUS}"},
    ],
)
def test_spoofed_peer_headers_give_no_identity(mtls: MtlsEnv, spoofed: dict[str, str]) -> None:
    # The HTTP transport reads the peer identity from headers that only Envoy sets;
    # a client-sent copy is dropped before the check and never read over gRPC.
    got, _, body = mtls.get(OTHER, "/internal/metrics", headers=spoofed)
    assert got == 403
    assert json.loads(body)["error"] == "spiffe_id_not_allowed"
    got, _, body = mtls.get(
        PROMETHEUS, "/internal/metrics", headers={"x-authz-peer-principal": OTHER}
    )
    assert got == 200
    assert json.loads(body)["headers"]["x-authz-subject"] == PROMETHEUS


def _direct_check(mtls: MtlsEnv, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A check sent straight to the service's HTTP port, not through Envoy."""
    return send("GET", f"http://{mtls.stack.authz_address}/check/internal/metrics", headers)


def _direct_grpc_check(mtls: MtlsEnv, headers: dict[str, str]) -> int:
    """A CheckRequest sent straight to the service's gRPC port; the deny status (0: allow)."""
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    from authz.transport.envoy_grpc import build_check_request

    request = build_check_request(
        method="GET", path="/internal/metrics", host="api.local", headers=headers
    )
    with grpc.insecure_channel(mtls.stack.authz_address) as channel:
        reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)
    return 0 if reply.HasField("ok_response") else int(reply.denied_response.status.code)


def test_forged_peer_principal_sent_past_envoy_is_refused(mtls: MtlsEnv) -> None:
    if mtls.stack.transport != "http":
        # The gRPC transport takes the peer only from the attributes Envoy fills in:
        # a header claiming one is just a header, and the mTLS-only route stays shut.
        forged = {"x-authz-peer-principal": PROMETHEUS, "x-forwarded-client-cert": PROMETHEUS}
        assert _direct_grpc_check(mtls, forged) == 401
        return
    secret = mtls.stack.http_secret
    assert secret is not None
    forged = {"x-authz-peer-principal": PROMETHEUS, "host": "api.local"}
    for extra in ({}, {"x-authz-transport-secret": "0" * 64}):
        status, headers, body = _direct_check(mtls, {**forged, **extra})
        # the transport's own refusal, before the engine: no decision, no metadata
        assert (status, body) == (403, b"forbidden")
        assert "x-authz-meta-decision-id" not in headers
    # With the secret (what only Envoy's generated config sends) it is believed:
    # the secret is what the trust rests on.
    status, headers, _ = _direct_check(mtls, {**forged, "x-authz-transport-secret": secret})
    assert status == 200
    assert headers["x-authz-subject"] == PROMETHEUS
    log = (mtls.stack.state_dir / "authz.log").read_text()
    assert "refused (403): no x-authz-transport-secret header" in log
    assert secret not in log


def test_client_without_certificate_is_refused(mtls: MtlsEnv) -> None:
    ctx = ssl.create_default_context(cafile=mtls.pki.ca.cert)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        send("GET", mtls.stack.base_url + "/healthz", context=ctx)


def test_user_jwt_over_mtls_decides(mtls: MtlsEnv) -> None:
    """The peer identity comes with every connection in a mesh: it is not a second
    credential. The JWT the workload sends decides (and a bad one is refused, not
    ignored); without one, the peer identity does. A first_match route keeps the
    route order (here: the peer identity first)."""
    token = devissuer.mint(KEY, issuer=CORP, subject="alice", audience="orders")
    bearer = {"authorization": f"Bearer {token}"}
    status, _, body = mtls.get(OTHER, "/v1/workload", headers=bearer)
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert (seen["x-authz-subject"], seen["x-authz-identity-type"]) == ("alice", "jwt")
    status, _, body = mtls.get(OTHER, "/v1/workload", headers={"authorization": "Bearer x.y.z"})
    assert (status, json.loads(body)["error"]) == (401, "token_malformed")
    status, _, body = mtls.get(OTHER, "/v1/workload")
    assert status == 200
    assert json.loads(body)["headers"]["x-authz-subject"] == OTHER
    status, _, body = mtls.get(OTHER, "/v1/workload-old", headers={"authorization": "Bearer x.y.z"})
    assert status == 200
    assert json.loads(body)["headers"]["x-authz-identity-type"] == "mtls"
