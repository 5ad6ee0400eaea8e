"""Test PKI: CAs, server and SPIFFE client certificates, generated with ``cryptography``.

Keys are EC P-256 (fast to generate); certificates are valid from one hour ago for a
day, carry the extensions BoringSSL (Envoy) and OpenSSL (python ``ssl``) expect, and
are written as PEM files that ``authz envoy-config --tls-cert/--tls-key/--client-ca``
and ``ssl.SSLContext.load_cert_chain`` read directly.

    pki = make_mtls_pki(tmp_path)
    EnvoyOptions(..., tls=TlsOptions(pki.server.cert, pki.server.key, client_ca=pki.ca.cert))
    ctx = ssl.create_default_context(cafile=pki.ca.cert)
    ctx.load_cert_chain(pki.clients[PROMETHEUS].cert, pki.clients[PROMETHEUS].key)
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PROMETHEUS = "spiffe://demo.local/ns/ops/sa/prometheus"
EVIL = "spiffe://evil.example/ns/x/sa/y"


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, in memory."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def write(self, directory: Path, stem: str) -> CertFiles:
        """Write ``STEM.crt`` and ``STEM.key`` (mode 0600) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_text(self.cert_pem)
        key.touch(mode=0o600)
        key.write_text(self.key_pem)
        return CertFiles(cert=str(cert), key=str(key), pem=self.cert_pem)


@dataclass(frozen=True)
class CertFiles:
    """Where an :class:`Issued` was written (str paths, as EnvoyOptions/ssl take them)."""

    cert: str
    key: str
    pem: str  # the certificate's PEM text


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


def generate_ca(common_name: str) -> Issued:
    """A self-signed root CA (a trust bundle of one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(builder.sign(key, hashes.SHA256()), key)


def issue_cert(
    ca: Issued,
    common_name: str,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    uris: Sequence[str] = (),
    server: bool = False,
    client: bool = False,
) -> Issued:
    """A leaf certificate signed by ``ca`` with the given SANs and extended key usages.

    A SPIFFE X.509-SVID for a workload is ``issue_cert(ca, "prometheus",
    uris=["spiffe://demo.local/ns/ops/sa/prometheus"], client=True)``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class MtlsPki:
    """The files of :func:`make_mtls_pki`."""

    ca: CertFiles  # the trust bundle Envoy verifies client certificates against (--client-ca)
    server: CertFiles  # Envoy's certificate: localhost, 127.0.0.1, ::1; signed by ca
    clients: dict[str, CertFiles]  # SPIFFE ID -> client certificate signed by ca
    other_ca: CertFiles  # a CA Envoy does not trust
    stranger: CertFiles  # a client certificate (PROMETHEUS's SPIFFE ID) signed by other_ca


def make_mtls_pki(directory: Path, spiffe_ids: Sequence[str] = (PROMETHEUS, EVIL)) -> MtlsPki:
    """Write a CA, a server certificate and one client certificate per SPIFFE ID.

    Plus a second CA and a client certificate from it that claims ``PROMETHEUS``.
    """
    ca = generate_ca("authz test CA")
    other = generate_ca("untrusted test CA")
    server = issue_cert(
        ca, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1", "::1"], server=True
    )
    clients = {
        spiffe_id: issue_cert(
            ca, spiffe_id.rsplit("/", 1)[-1], uris=[spiffe_id], client=True
        ).write(directory, f"client-{i}")
        for i, spiffe_id in enumerate(spiffe_ids)
    }
    stranger = issue_cert(other, "stranger", uris=[PROMETHEUS], client=True)
    return MtlsPki(
        ca=ca.write(directory, "ca"),
        server=server.write(directory, "server"),
        clients=clients,
        other_ca=other.write(directory, "other-ca"),
        stranger=stranger.write(directory, "stranger"),
    )
