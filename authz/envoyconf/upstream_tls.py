"""Upstream TLS to the service: the ``authz`` cluster's transport socket when Envoy
calls ``authz serve --tls-cert`` (mTLS with ``--authz-tls-cert``, for a service that
requires a client certificate: ``authz serve --tls-client-ca``)."""

from __future__ import annotations

from envoy_data_plane.envoy.config.core.v3 import DataSource, TransportSocket
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    TlsCertificate,
    TlsParameters,
    TlsParametersTlsProtocol,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.google.protobuf import Any

from authz.envoyconf.common import TLS_TRANSPORT_SOCKET
from authz.envoyconf.options import AuthzTlsOptions
from authz.units import HostPort


def upstream_tls(tls: AuthzTlsOptions, target: HostPort, *, grpc: bool) -> TransportSocket:
    """The authz cluster's TLS: the service's certificate verified against ``tls.ca`` and
    its SAN against the server name (the ``--authz`` host unless given); Envoy's client
    certificate when given (mTLS, ``authz serve --tls-client-ca``)."""
    name = tls.server_name or target.host
    ip = tls.server_name is None and target.is_ip
    kind = SubjectAltNameMatcherSanType.IP_ADDRESS if ip else SubjectAltNameMatcherSanType.DNS
    san = SubjectAltNameMatcher(san_type=kind, matcher=StringMatcher(exact=name.strip("[]")))
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
