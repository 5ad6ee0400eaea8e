"""End to end: Envoy calls the service over mutual TLS, on both transports.

`authz serve --tls-cert --tls-key --tls-client-ca` and the matching
`authz envoy-config --authz-tls-ca --authz-tls-cert --authz-tls-key`: a request through
Envoy is decided; a client without a certificate (or a plaintext one) never gets a
decision from the service; a certificate written over the files is served to the next
connection, and Envoy keeps working across the change.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from authz.envoyconf.options import AuthzTlsOptions
from tests.certs import CertFiles, Issued, generate_ca, issue_cert

pytestmark = pytest.mark.e2e

POLICY = """\
mode: enforce
undeclared_routes: deny
routes:
  - name: echo
    path: /v1/echo
    methods: [GET]
    public: true
    rate_limits: [{name: open, key: [client_address], rate: 1000/s}]
"""


@dataclass
class Pki:
    ca: Issued
    ca_files: CertFiles
    server: CertFiles
    envoy: CertFiles
    directory: Path


def make_pki(directory: Path) -> Pki:
    ca = generate_ca("authz service CA")
    server = issue_cert(
        ca, "authz", dns_names=["localhost"], ip_addresses=["127.0.0.1"], server=True
    ).write(directory, "authz")
    envoy = issue_cert(ca, "envoy", uris=["spiffe://demo.local/envoy"], client=True)
    return Pki(ca, ca.write(directory, "ca"), server, envoy.write(directory, "envoy"), directory)


@pytest.fixture(scope="module", params=["grpc", "http"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalStack, Pki]]:
    tmp: Path = tmp_path_factory.mktemp(f"e2e-service-tls-{request.param}")
    pki = make_pki(tmp / "pki")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    running = LocalStack(
        policy=policy, state_dir=tmp / "state", transport=request.param,
        authz_tls=AuthzTlsOptions(
            ca=pki.ca_files.cert, cert_chain=pki.envoy.cert, private_key=pki.envoy.key
        ),
        extra_serve_args=(
            "--tls-cert", pki.server.cert, "--tls-key", pki.server.key,
            "--tls-client-ca", pki.ca_files.cert,
        ),
    )  # fmt: skip
    with running:
        yield running, pki


def served_certificate(
    stack: LocalStack, pki: Pki, *, client_cert: bool = True
) -> x509.Certificate:
    """The certificate the service presents to a new TLS connection."""
    context = ssl.create_default_context(cafile=pki.ca_files.cert)
    context.set_alpn_protocols(["h2"] if stack.transport == "grpc" else ["http/1.1"])
    if client_cert:
        context.load_cert_chain(pki.envoy.cert, pki.envoy.key)
    raw = socket.create_connection(("127.0.0.1", stack.authz_port), timeout=5)
    with raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
        if not client_cert:  # TLS 1.3: the refusal comes after the handshake
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            if not tls.recv(1):
                raise ConnectionResetError("closed")
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_request_through_envoy_is_decided_over_mtls(stack: tuple[LocalStack, Pki]) -> None:
    running, _ = stack
    status, _, body = send("GET", running.base_url + "/v1/echo")
    assert status == 200, body
    assert json.loads(body)["headers"]["x-authz-decision-id"]


def test_a_client_without_a_certificate_is_refused(stack: tuple[LocalStack, Pki]) -> None:
    running, pki = stack
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        served_certificate(running, pki, client_cert=False)


def test_a_plaintext_client_gets_no_answer(stack: tuple[LocalStack, Pki]) -> None:
    running, _ = stack
    with socket.create_connection(("127.0.0.1", running.authz_port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(64)
        except (ConnectionError, TimeoutError):  # no TLS handshake: no answer at all
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 200")


def test_a_new_certificate_is_served_to_the_next_connection(stack: tuple[LocalStack, Pki]) -> None:
    running, pki = stack
    before = served_certificate(running, pki)
    renewed = issue_cert(
        pki.ca, "authz-renewed", dns_names=["localhost"], ip_addresses=["127.0.0.1"], server=True
    )
    # key first, then the certificate: the reloader waits for a pair that matches
    Path(pki.server.key).write_text(renewed.key_pem)
    Path(pki.server.cert).write_text(renewed.cert_pem)
    deadline = time.monotonic() + 10
    after = before
    while time.monotonic() < deadline and after.serial_number == before.serial_number:
        time.sleep(0.3)
        after = served_certificate(running, pki)
    assert after.serial_number == renewed.certificate.serial_number
    status, _, body = send("GET", running.base_url + "/v1/echo")
    assert status == 200, body
