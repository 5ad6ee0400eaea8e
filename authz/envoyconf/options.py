"""Where things are for one deployment of a policy: :class:`EnvoyOptions` and
:class:`TlsOptions` (checked when built), and the ``--timeout`` parser."""

from __future__ import annotations

from dataclasses import dataclass, field

from authz.envoyconf.common import EnvoyConfigError
from authz.units import HostPort, parse_duration

TRANSPORTS = ("grpc", "http")


def parse_timeout(text: str) -> float:
    """Parse ``0.5s``, ``500ms`` or ``0.5`` (seconds), 1ms to 60s; raises ValueError."""
    return parse_duration(text, minimum=0.001, maximum=60.0, units=("ms", "s"))


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS on Envoy's listener; with ``client_ca``, mutual TLS.

    Paths are written into the config as given: Envoy reads the files when it starts
    (relative paths against its working directory).
    """

    cert_chain: str  # PEM: Envoy's certificate, then any intermediates
    private_key: str  # PEM, unencrypted
    #: PEM trust bundle; when set, client certificates are verified against it and a
    #: certificate that does not verify ends the handshake.
    client_ca: str | None = None
    #: Refuse clients without a certificate. None: True when client_ca or
    #: trust_bundles are set. Without either, Envoy does not ask for client
    #: certificates at all.
    require_client_cert: bool | None = None
    #: (trust domain, PEM CA bundle) pairs: instead of client_ca, Envoy's SPIFFE
    #: certificate validator verifies each client certificate against the bundle of
    #: its own SPIFFE ID's trust domain, so one domain's CA cannot vouch for another's
    #: IDs. :func:`authz.envoyconf.build_bootstrap` fills it from the policy's mtls
    #: providers (``trust_bundles``) when client_ca is not given.
    trust_bundles: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.cert_chain or not self.private_key:
            raise EnvoyConfigError("TLS needs both a certificate chain and a private key")
        if self.client_ca == "":
            raise EnvoyConfigError("client_ca is an empty path")
        if self.client_ca is not None and self.trust_bundles:
            raise EnvoyConfigError(
                "give one trust bundle (client_ca) or one per trust domain (trust_bundles), "
                "not both"
            )
        verifies = self.client_ca is not None or bool(self.trust_bundles)
        if self.require_client_cert is None:
            object.__setattr__(self, "require_client_cert", verifies)
        elif self.require_client_cert and not verifies:
            raise EnvoyConfigError(
                "requiring client certificates needs a trust bundle to verify them (client_ca)"
            )


@dataclass(frozen=True, slots=True)
class AuthzTlsOptions:
    """TLS from Envoy to the service (``authz serve --tls-cert``); with a client
    certificate, mutual TLS (``authz serve --tls-client-ca``).

    Envoy verifies the service's certificate against ``ca`` and its subject alternative
    name against ``server_name`` (None: the ``--authz`` host, as an IP or DNS SAN).
    """

    ca: str  # PEM trust bundle for the service's certificate
    cert_chain: str | None = None  # Envoy's client certificate (PEM), for mTLS
    private_key: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if not self.ca:
            raise EnvoyConfigError("TLS to the service needs a trust bundle (--authz-tls-ca)")
        if (self.cert_chain is None) != (self.private_key is None):
            raise EnvoyConfigError("--authz-tls-cert and --authz-tls-key go together")


@dataclass(frozen=True, slots=True)
class EnvoyOptions:
    """Where things are, for one deployment of the same policy."""

    listen: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 8080))
    upstream: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 8000))
    authz: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 9191))
    admin: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 9901))
    #: How long Envoy waits for the authz service before denying (status_on_error).
    timeout: float = 0.5
    #: Downstream TLS/mTLS on the listener; None: plaintext.
    tls: TlsOptions | None = None
    #: How Envoy calls the service: ``grpc`` (ext_authz v3 gRPC) or ``http``
    #: (ext_authz http_service, the service's ``--http`` port).
    transport: str = "grpc"
    #: Over HTTP: the transport secret Envoy adds to every check (the value of the
    #: service's ``--http-secret-file``); None: none is sent.
    http_secret: str | None = field(default=None, repr=False)
    #: Envoy's gRPC access log (``envoy.access_loggers.http_grpc``) to the service's
    #: access-log port (``authz serve --access-log-grpc``); None: stdout only.
    access_log: HostPort | None = None
    #: The secret Envoy sends on its access-log stream (the service's
    #: ``--access-log-secret-file``); None: none.
    access_log_secret: str | None = field(default=None, repr=False)
    #: The OTLP gRPC collector Envoy sends its own spans to (``envoy.tracers.opentelemetry``,
    #: :mod:`authz.envoyconf.tracing`); None: Envoy does not trace.
    tracing: HostPort | None = None
    #: TLS (and with a client certificate, mTLS) on Envoy's calls to the service;
    #: None: plaintext.
    authz_tls: AuthzTlsOptions | None = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise EnvoyConfigError(
                f"transport {self.transport!r} is not one of {', '.join(TRANSPORTS)}"
            )
        if self.http_secret is not None and self.transport != "http":
            raise EnvoyConfigError("a transport secret is for --transport http only")
        if self.access_log_secret is not None and self.access_log is None:
            raise EnvoyConfigError("an access-log secret needs --access-log")
