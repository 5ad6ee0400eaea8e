"""Downstream TLS: the listener's transport socket (TLS 1.2 at least; with a trust
bundle, client certificates verified) and the checks ``authz envoy-config`` runs on the
certificate, key and bundle files before writing a config that names them."""

from __future__ import annotations

import datetime
from pathlib import Path

from envoy_data_plane.envoy.config.core.v3 import (
    DataSource,
    TransportSocket,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    TlsCertificate,
    TlsParameters,
    TlsParametersTlsProtocol,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.google.protobuf import Any

from authz.envoyconf.common import TLS_TRANSPORT_SOCKET, EnvoyConfigError
from authz.envoyconf.options import AuthzTlsOptions, TlsOptions
from authz.units import HostPort


def downstream_tls(tls: TlsOptions) -> TransportSocket:
    """The listener's TLS: Envoy's certificate and, with a trust bundle, client verification."""
    common = CommonTlsContext(
        tls_params=TlsParameters(tls_minimum_protocol_version=TlsParametersTlsProtocol.TLSv1_2),
        tls_certificates=[
            TlsCertificate(
                certificate_chain=DataSource(filename=tls.cert_chain),
                private_key=DataSource(filename=tls.private_key),
            )
        ],
        # HTTP/2 over TLS is negotiated by ALPN (codec_type AUTO).
        alpn_protocols=["h2", "http/1.1"],
    )
    if tls.client_ca is not None:
        # Chain verification only: no SAN matchers, the policy decides which SPIFFE IDs
        # may call which route.
        common.validation_context = CertificateValidationContext(
            trusted_ca=DataSource(filename=tls.client_ca)
        )
    context = DownstreamTlsContext(
        common_tls_context=common,
        require_client_certificate=bool(tls.require_client_cert),
    )
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=Any.pack(context))


def upstream_tls(tls: AuthzTlsOptions, target: HostPort, *, grpc: bool) -> TransportSocket:
    """The authz cluster's TLS: the service's certificate verified against ``tls.ca`` and
    its SAN against the server name (the ``--authz`` host unless given); Envoy's client
    certificate when given (mTLS, ``authz serve --tls-client-ca``)."""
    name = tls.server_name or target.host
    ip = tls.server_name is None and target.is_ip
    san = SubjectAltNameMatcher(
        san_type=SubjectAltNameMatcherSanType.IP_ADDRESS
        if ip
        else SubjectAltNameMatcherSanType.DNS,
        matcher=StringMatcher(exact=name.strip("[]")),
    )
    common = CommonTlsContext(
        tls_params=TlsParameters(tls_minimum_protocol_version=TlsParametersTlsProtocol.TLSv1_2),
        validation_context=CertificateValidationContext(
            trusted_ca=DataSource(filename=tls.ca), match_typed_subject_alt_names=[san]
        ),
        alpn_protocols=["h2"] if grpc else ["http/1.1"],
    )
    if tls.cert_chain is not None and tls.private_key is not None:
        common.tls_certificates = [
            TlsCertificate(
                certificate_chain=DataSource(filename=tls.cert_chain),
                private_key=DataSource(filename=tls.private_key),
            )
        ]
    context = UpstreamTlsContext(common_tls_context=common, sni="" if ip else name)
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=Any.pack(context))


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise EnvoyConfigError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None


def check_tls_files(tls: TlsOptions) -> None:
    """Check now what Envoy would otherwise reject (or accept wrongly) when it starts.

    The files must be readable PEM: a certificate chain whose first certificate is
    current and matches the (unencrypted) private key, and a trust bundle of one or
    more certificates. Raises EnvoyConfigError naming the file and the problem.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        chain = x509.load_pem_x509_certificates(_read(tls.cert_chain, "--tls-cert"))
    except ValueError:
        raise EnvoyConfigError(f"--tls-cert {tls.cert_chain}: no PEM certificate in it") from None
    try:
        key = serialization.load_pem_private_key(_read(tls.private_key, "--tls-key"), password=None)
    except TypeError:
        raise EnvoyConfigError(
            f"--tls-key {tls.private_key}: the private key is encrypted; Envoy needs it unencrypted"
        ) from None
    except ValueError as exc:
        raise EnvoyConfigError(
            f"--tls-key {tls.private_key}: not a PEM private key ({exc})"
        ) from None
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise EnvoyConfigError(
            f"--tls-key {tls.private_key} is not the private key of the first certificate "
            f"in --tls-cert {tls.cert_chain}"
        )
    now = datetime.datetime.now(datetime.UTC)
    leaf = chain[0]
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise EnvoyConfigError(
            f"--tls-cert {tls.cert_chain}: the certificate is valid only from "
            f"{leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    if tls.client_ca is not None:
        try:
            x509.load_pem_x509_certificates(_read(tls.client_ca, "--client-ca"))
        except ValueError:
            raise EnvoyConfigError(
                f"--client-ca {tls.client_ca}: no PEM certificate in it"
            ) from None
