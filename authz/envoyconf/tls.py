"""Downstream TLS: the listener's transport socket (TLS 1.2 at least; with a trust
bundle, client certificates verified; with one bundle per trust domain, by Envoy's
SPIFFE certificate validator) and the checks ``authz envoy-config`` runs on the
certificate, key and bundle files before writing a config that names them."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from pathlib import Path

from envoy_data_plane.envoy.config.core.v3 import (
    DataSource,
    TransportSocket,
    TypedExtensionConfig,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    SpiffeCertValidatorConfig,
    SpiffeCertValidatorConfigTrustDomain,
    TlsCertificate,
    TlsParameters,
    TlsParametersTlsProtocol,
)
from envoy_data_plane.google.protobuf import Any

from authz.envoyconf.common import TLS_TRANSPORT_SOCKET, EnvoyConfigError
from authz.envoyconf.options import TlsOptions
from authz.policy.config import MtlsProviderConfig, ProviderConfig


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
    elif tls.trust_bundles:
        common.validation_context = spiffe_validation_context(tls.trust_bundles)
    context = DownstreamTlsContext(
        common_tls_context=common,
        require_client_certificate=bool(tls.require_client_cert),
    )
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=Any.pack(context))


#: Envoy's SPIFFE certificate validator (extensions.transport_sockets.tls.v3).
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"


def spiffe_validation_context(
    bundles: tuple[tuple[str, str], ...],
) -> CertificateValidationContext:
    """Verify each client certificate against its own trust domain's bundle only.

    Envoy picks the bundle by the trust domain of the certificate's ``spiffe://``
    URI SAN, then verifies the chain against that bundle alone: a certificate claiming
    a domain whose CA did not sign it, or with no SPIFFE URI SAN at all, ends the
    handshake. Like ``trusted_ca``, no SAN matchers: the policy decides who may call.
    """
    config = SpiffeCertValidatorConfig(
        trust_domains=[
            SpiffeCertValidatorConfigTrustDomain(
                name=domain, trust_bundle=DataSource(filename=bundle)
            )
            for domain, bundle in bundles
        ]
    )
    return CertificateValidationContext(
        custom_validator_config=TypedExtensionConfig(
            name=SPIFFE_VALIDATOR, typed_config=Any.pack(config)
        )
    )


def policy_trust_bundles(providers: Iterable[ProviderConfig]) -> tuple[tuple[str, str], ...]:
    """The policy's (trust domain, bundle) pairs, from its mtls providers, sorted.

    All or none: a trust domain without a bundle would not verify at all under the
    SPIFFE validator, and one domain cannot have two different bundles.
    """
    bundles: dict[str, str] = {}
    missing: list[str] = []
    for provider in providers:
        if not isinstance(provider, MtlsProviderConfig):
            continue
        if not provider.trust_bundles:
            missing.append(provider.name)
            continue
        for domain, bundle in provider.trust_bundles:
            if bundles.setdefault(domain, bundle) != bundle:
                raise EnvoyConfigError(
                    f"trust domain {domain!r} has two trust bundles: {bundles[domain]} "
                    f"and {bundle} (providers.{provider.name}.trust_bundles)"
                )
    if bundles and missing:
        raise EnvoyConfigError(
            f"mtls provider(s) {', '.join(missing)} have no trust_bundles while others do: "
            "give every mtls provider one bundle per trust domain"
        )
    return tuple(sorted(bundles.items()))


def with_policy_trust_bundles(
    tls: TlsOptions | None, providers: Iterable[ProviderConfig]
) -> TlsOptions | None:
    """``tls`` verifying client certificates per trust domain when the policy names
    bundles and no single ``client_ca`` was given (giving both is an error)."""
    if tls is None or tls.trust_bundles:
        return tls
    bundles = policy_trust_bundles(providers)
    if not bundles:
        return tls
    if tls.client_ca is not None:
        raise EnvoyConfigError(
            "the policy names one trust bundle per trust domain (trust_bundles of its mtls "
            "providers): drop --client-ca, Envoy then verifies each certificate against "
            "its own domain's bundle"
        )
    return dataclasses.replace(tls, trust_bundles=bundles, require_client_cert=None)


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
