"""End to end: client certificates are SPIFFE X.509-SVIDs as the spec has them, on
both transports, through a real Envoy from the config ``authz envoy-config`` writes.

- The SPIFFE ID is the certificate's one URI SAN: two URI SANs, or a SPIFFE ID only
  in a DNS SAN, are refused (Envoy alone would pass the first URI SAN, or the DNS SAN,
  as the principal).
- With one trust bundle per trust domain (the policy's ``trust_bundles``), Envoy's
  SPIFFE validator lets a domain's CA vouch for its own IDs only; with one shared
  bundle (``--client-ca``) any CA in it could.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from authz.envoyconf import TlsOptions
from tests.certs import CertFiles, generate_ca, issue_cert

pytestmark = pytest.mark.e2e

ONE = "spiffe://a.local/ns/x/sa/one"
ADMIN = "spiffe://a.local/ns/x/sa/admin"
B_WORKER = "spiffe://b.local/ns/y/sa/worker"
INTRUDER = "spiffe://b.local/ns/y/sa/intruder"

POLICY = """\
providers:
  mesh:
    type: mtls
    trust_domains: [a.local, b.local]
@BUNDLES@
routes:
  - {name: who, path: /who, methods: [GET], providers: [mesh]}
  - {name: admin, path: /admin, methods: [GET], providers: [mesh], spiffe_ids: ["spiffe://a.local/ns/x/sa/admin"]}
"""
BUNDLES = "    trust_bundles: {a.local: a-ca.crt, b.local: b-ca.crt}"

#: client certificate name -> (issuing CA, URI SANs, DNS SANs)
CLIENTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "one-uri-san": ("a", (ONE,), ()),
    "admin": ("a", (ADMIN,), ()),
    "two-uri-sans": ("a", (ONE, ADMIN), ()),
    "admin-second-uri-san": ("a", (ONE, ADMIN), ()),
    "spiffe-id-in-dns-san": ("a", (), (ADMIN,)),
    "b-by-b-ca": ("b", (B_WORKER,), ()),
    "b-by-a-ca": ("a", (INTRUDER,), ()),
}


@dataclass
class SvidEnv:
    stack: LocalStack
    server_ca: str
    clients: dict[str, CertFiles]
    per_domain: bool

    def get(
        self, client: str, path: str = "/who", headers: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        """(status, reason or "", subject or "") of GET ``path`` with ``client``'s cert;
        (0, "handshake", "") when the TLS handshake fails."""
        ctx = ssl.create_default_context(cafile=self.server_ca)
        ctx.load_cert_chain(self.clients[client].cert, self.clients[client].key)
        try:
            status, _, body = send("GET", self.stack.base_url + path, headers, context=ctx)
        except (urllib.error.URLError, ssl.SSLError, ConnectionError):
            return 0, "handshake", ""
        data = json.loads(body)
        if status == 200:
            return status, "", data["headers"]["x-authz-subject"]
        return status, data["error"], ""


@pytest.fixture(
    scope="module",
    params=[("grpc", False), ("http", False), ("grpc", True), ("http", True)],
    ids=["grpc-one-bundle", "http-one-bundle", "grpc-per-domain", "http-per-domain"],
)
def svid(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[SvidEnv]:
    transport, per_domain = request.param
    tmp = tmp_path_factory.mktemp(f"svid-{transport}-{per_domain}")
    cas = {"a": generate_ca("a.local CA"), "b": generate_ca("b.local CA")}
    a_file = cas["a"].write(tmp, "a-ca")
    cas["b"].write(tmp, "b-ca")
    server = issue_cert(
        cas["a"], "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"], server=True
    ).write(tmp, "server")
    clients = {
        name: issue_cert(cas[ca], name, uris=uris, dns_names=dns, client=True).write(tmp, name)
        for name, (ca, uris, dns) in CLIENTS.items()
    }
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.replace("@BUNDLES@", BUNDLES if per_domain else ""))
    if per_domain:
        tls = TlsOptions(server.cert, server.key)  # the policy's bundles are used
    else:
        # One bundle holding both CAs: what --client-ca gives.
        shared = tmp / "both-cas.crt"
        shared.write_text(Path(a_file.cert).read_text() + (tmp / "b-ca.crt").read_text())
        tls = TlsOptions(server.cert, server.key, client_ca=str(shared))
    stack = LocalStack(policy=policy, state_dir=tmp / "state", tls=tls, transport=transport)
    try:
        stack.start()
        yield SvidEnv(stack, a_file.cert, clients, per_domain)
    finally:
        stack.stop()


def test_one_uri_san_is_the_identity(svid: SvidEnv) -> None:
    assert svid.get("one-uri-san") == (200, "", ONE)
    assert svid.get("b-by-b-ca") == (200, "", B_WORKER)


def test_two_uri_sans_are_refused(svid: SvidEnv) -> None:
    # Envoy's principal is the first URI SAN (ONE): not an identity to take.
    assert svid.get("two-uri-sans") == (401, "peer_identity_ambiguous", "")
    # nor can the second one open a route allow-listed for it
    assert svid.get("admin-second-uri-san", "/admin") == (401, "peer_identity_ambiguous", "")


def test_spiffe_id_in_a_dns_san_is_refused(svid: SvidEnv) -> None:
    got = svid.get("spiffe-id-in-dns-san", "/admin")
    if svid.per_domain:
        # Envoy's SPIFFE validator finds no spiffe:// URI SAN, hence no bundle.
        assert got == (0, "handshake", "")
    else:
        # Envoy passes the DNS SAN as the principal; the service reads the certificate.
        assert got == (401, "peer_identity_not_uri_san", "")


def test_a_domain_ca_vouches_for_its_own_ids_only(svid: SvidEnv) -> None:
    got = svid.get("b-by-a-ca")
    if svid.per_domain:
        assert got == (0, "handshake", "")  # b.local's bundle did not sign it
    else:
        # One shared bundle: chain verification alone cannot tell; this is why the
        # policy's trust_bundles exist.
        assert got == (200, "", INTRUDER)


def test_a_client_sent_certificate_header_is_not_read(svid: SvidEnv) -> None:
    # The certificate the service reads is the one Envoy verified, never a copy sent
    # by the client (over HTTP Envoy overwrites the header and keeps it from the check).
    admin_pem = quote(svid.clients["admin"].pem, safe="")
    assert svid.get("admin", "/admin") == (200, "", ADMIN)
    spoofed = {"x-authz-peer-certificate": admin_pem, "x-forwarded-client-cert": admin_pem}
    assert svid.get("one-uri-san", "/admin", spoofed) == (403, "spiffe_id_not_allowed", "")
