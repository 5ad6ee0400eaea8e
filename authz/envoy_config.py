"""``authz envoy-config``: the Envoy bootstrap that fronts this service, from a policy.

The config is built with envoy-data-plane's typed classes (so a misspelt field or a
wrong type fails here, not in Envoy) and serialised to the plain JSON/YAML form
Envoy reads, ``@type`` on every ``Any``.

What it encodes, and why:

- Fail closed: ext_authz with ``failure_mode_allow: false`` and ``status_on_error``
  403, so an unreachable, slow or broken authz service denies.
- One path for Envoy and the service: Envoy normalises the path (dot segments,
  merged slashes, escaped slashes rejected) and rejects headers with underscores
  before anything routes or authorises, and strips any port from the host.
- Routes mirror :class:`authz.routing.Router`: one virtual host per host name the
  policy names (exact, or ``*.suffix``), holding that host's routes plus the routes
  for any host; a ``*`` virtual host with the routes for any host. Within a virtual
  host, routes are emitted in specificity order, so Envoy's first match is the
  service's most specific match. Each ends with a catch-all that still calls the
  service (which answers 404 ``undeclared_route`` or, in monitor mode, allows).
- Public routes skip ext_authz, so Envoy itself removes client-sent copies of the
  identity headers there; everywhere else the service removes them. A public route
  with a contract or rate limits is the exception: it is checked (anonymously) so
  its request is validated and counted.
- The request body goes to the service only on routes whose contract validates it
  (``check_settings.with_request_body``, limited to the contract's ``max_body_bytes``,
  partial bodies refused with 413, raw bytes); buffering stays off everywhere else.
- Optional downstream TLS (``--tls-cert/--tls-key``), TLS 1.2 at least; with a trust
  bundle (``--client-ca``) Envoy verifies client certificates (mTLS, SPIFFE X.509-SVIDs)
  and ext_authz sends the verified identity: ``attributes.source.principal`` (the URI
  SAN) and the URL-encoded PEM in ``attributes.source.certificate``. Which SPIFFE IDs
  may call which route is the policy's decision, not Envoy's: no SAN matchers here.
  ``x-forwarded-client-cert`` from the client is removed (SANITIZE), never forwarded.
- Over HTTP (``--transport http``) with ``--http-secret-file``, every check carries
  the transport secret (``headers_to_add``, overwriting; a client's copy is never
  sent), so the service can tell Envoy's checks from forged ones. The config then
  holds a secret: the file is written readable by its owner only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any as AnyType

import betterproto2
import yaml
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog, AccessLogFilter, MetadataFilter
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterLbPolicy
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    ApiVersion,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    HealthCheckHttpHealthCheck,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    HttpProtocolOptionsHeadersWithUnderscoresAction,
    HttpUri,
    Node,
    SocketAddress,
    SubstitutionFormatString,
    TransportSocket,
    TypedExtensionConfig,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.overload.v3 import OverloadManager, ResourceMonitor
from envoy_data_plane.envoy.config.route.v3 import (
    HeaderMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import (
    AuthorizationRequest,
    AuthorizationResponse,
    BufferSettings,
    CheckSettings,
    ExtAuthz,
    ExtAuthzPerRoute,
    HttpService,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpConnectionManagerForwardClientCertDetails,
    HttpConnectionManagerPathWithEscapedSlashesAction,
    HttpFilter,
    LocalReplyConfig,
    ResponseMapper,
)
from envoy_data_plane.envoy.extensions.path.match.uri_template.v3 import UriTemplateMatchConfig
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3 import (
    DownstreamConnectionsConfig,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    TlsCertificate,
    TlsParameters,
    TlsParametersTlsProtocol,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions as UpstreamHttpProtocolOptions,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import (
    ListStringMatcher,
    MetadataMatcher,
    MetadataMatcherPathSegment,
    RegexMatcher,
    StringMatcher,
    ValueMatcher,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any, Struct

from authz.pathtemplate import LITERAL, REST, parse_template
from authz.policy.config import (
    ApiKeyProviderConfig,
    JwtProviderConfig,
    PolicyConfig,
    RouteConfig,
)
from authz.transport import envoy_http

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
ROUTER_FILTER = "envoy.filters.http.router"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
URI_TEMPLATE_MATCHER = "envoy.path.match.uri_template.uri_template_matcher"
AUTHZ_CLUSTER = "authz"
UPSTREAM_CLUSTER = "upstream"
CATCH_ALL_ROUTE = "undeclared"
ANY_HOST = "*"
TRANSPORTS = ("grpc", "http")
#: Seconds before Envoy closes an idle connection to the HTTP transport; below the
#: service's default --http-idle-timeout.
AUTHZ_HTTP_IDLE_TIMEOUT = 30

# Proto3 leaves fields at their default value out of the JSON. These are defaults,
# but a reader auditing the committed config should see them, so they are written
# out explicitly (same meaning to Envoy).
_EXPLICIT_DEFAULTS: dict[str, dict[str, object]] = {
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": {
        "failure_mode_allow": False,
        "clear_route_cache": False,
    },
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager": {
        "forward_client_cert_details": "SANITIZE",
        "preserve_external_request_id": False,
    },
}


class EnvoyConfigError(ValueError):
    """The policy or options cannot be expressed as a safe Envoy config."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str  # a DNS name, an IPv4 address or a bare IPv6 address (no brackets)
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_DNS_NAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def parse_host_port(text: str) -> HostPort:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); raises ValueError saying what is wrong."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [IPV6]:PORT")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, [ADDR]:PORT")
        if not _DNS_NAME_RE.match(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return HostPort(host, int(port_text))


def parse_timeout(text: str) -> float:
    """Parse ``0.5s``, ``500ms`` or ``0.5`` (seconds); raises ValueError."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s)?\s*", text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration such as 0.5s or 500ms")
    seconds = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if not 0.001 <= seconds <= 60.0:
        raise ValueError(f"{text!r} is not between 1ms and 60s")
    return seconds


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
    #: Refuse clients without a certificate. None: True when client_ca is set. Without
    #: client_ca, Envoy does not ask for client certificates at all.
    require_client_cert: bool | None = None

    def __post_init__(self) -> None:
        if not self.cert_chain or not self.private_key:
            raise EnvoyConfigError("TLS needs both a certificate chain and a private key")
        if self.client_ca == "":
            raise EnvoyConfigError("client_ca is an empty path")
        if self.require_client_cert is None:
            object.__setattr__(self, "require_client_cert", self.client_ca is not None)
        elif self.require_client_cert and self.client_ca is None:
            raise EnvoyConfigError(
                "requiring client certificates needs a trust bundle to verify them (client_ca)"
            )


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

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise EnvoyConfigError(
                f"transport {self.transport!r} is not one of {', '.join(TRANSPORTS)}"
            )
        if self.http_secret is not None and self.transport != "http":
            raise EnvoyConfigError("a transport secret is for --transport http only")


# ---------------------------------------------------------------------------------------
# Building blocks


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def _socket(hp: HostPort) -> Address:
    return Address(socket_address=SocketAddress(address=hp.host, port_value=hp.port))


def _extension(name: str, message: betterproto2.Message) -> TypedExtensionConfig:
    return TypedExtensionConfig(name=name, typed_config=Any.pack(message))


def _metadata_key(key: str, transport: str) -> str:
    """The ext_authz dynamic metadata key of ``key`` as this transport delivers it."""
    return envoy_http.metadata_header(key) if transport == "http" else key


def _access_log(transport: str = "grpc") -> AccessLog:
    meta = {
        key: f"%DYNAMIC_METADATA({EXT_AUTHZ_FILTER}:{_metadata_key(key, transport)})%"
        for key in ("decision_id", "subject", "reason", "policy_version")
    }
    fmt = {
        "time": "%START_TIME%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "method": "%REQ(:METHOD)%",
        # Without the query string: it may carry credentials or personal data.
        "path": "%PATH(WQ)%",
        "authority": "%REQ(:AUTHORITY)%",
        "protocol": "%PROTOCOL%",
        "route": "%ROUTE_NAME%",
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%",
        "duration_ms": "%DURATION%",
        "upstream": "%UPSTREAM_HOST%",
        "user_agent": "%REQ(USER-AGENT)%",
        **meta,
    }
    stdout = StdoutAccessLog(log_format=SubstitutionFormatString(json_format=Struct.from_dict(fmt)))
    return AccessLog(name="envoy.access_loggers.stdout", typed_config=Any.pack(stdout))


def _body_limit(policy: PolicyConfig) -> int:
    """The largest body any route's contract reads (0: no route reads bodies)."""
    return max(
        (r.contract.max_body_bytes for r in policy.routes if r.contract and r.contract.reads_body),
        default=0,
    )


def _buffer_settings(max_bytes: int) -> BufferSettings:
    return BufferSettings(
        max_request_bytes=max_bytes, allow_partial_message=False, pack_as_bytes=True
    )


def _exact(names: Sequence[str], prefixes: Sequence[str] = ()) -> ListStringMatcher:
    return ListStringMatcher(
        patterns=[StringMatcher(exact=n) for n in names]
        + [StringMatcher(prefix=p) for p in prefixes]
    )


#: Request headers every HTTP check carries besides the providers' credential headers
#: (Envoy adds Host, Method, Path, Content-Length and Authorization itself). A stage
#: that reads another request header must add it here.
HTTP_CHECK_HEADERS = ("x-request-id", "content-type", "x-forwarded-proto")


def http_check_headers(policy: PolicyConfig) -> list[str]:
    """The request headers Envoy sends on an HTTP check: what the decision reads.

    Each provider's credential header, the headers route contracts declare as
    parameters, the headers rate-limit keys name (and X-Forwarded-For when hops are
    trusted), plus :data:`HTTP_CHECK_HEADERS`. Derived from the policy, so a stage
    that reads a header the policy names gets it without a change here.
    """
    names = [
        p.header.lower()
        for p in policy.providers
        if isinstance(p, JwtProviderConfig | ApiKeyProviderConfig)
    ]
    names += HTTP_CHECK_HEADERS
    for route in policy.routes:
        if route.contract is not None:
            names += [p.name for p in route.contract.parameters if p.where == "header"]
    limits = policy.rate_limits
    for rule in (*limits.rules, *(r for route in policy.routes for r in route.rate_limits)):
        names += [part[len("header:") :].lower() for part in rule.key if part.startswith("header:")]
    if limits.trusted_hops > 0:
        names.append("x-forwarded-for")
    return list(dict.fromkeys(n for n in names if n not in envoy_http.TRUSTED_HEADERS))


def _http_service(policy: PolicyConfig, options: EnvoyOptions) -> HttpService:
    """ext_authz over HTTP (see :mod:`authz.transport.envoy_http` for the protocol)."""
    client = _exact(envoy_http.CLIENT_HEADERS, envoy_http.CLIENT_HEADER_PREFIXES)
    return HttpService(
        server_uri=HttpUri(
            uri=f"http://{options.authz}",
            cluster=AUTHZ_CLUSTER,
            timeout=_seconds(options.timeout),
        ),
        path_prefix=envoy_http.CHECK_PREFIX,
        authorization_request=AuthorizationRequest(
            # The verified peer identity and address, set by Envoy on every check,
            # overwriting whatever is there. With no peer certificate the principal is
            # empty and Envoy leaves the header out; a client-sent copy never reaches
            # the service either way (disallowed_headers below).
            headers_to_add=[
                HeaderValue(
                    key=envoy_http.PEER_PRINCIPAL_HEADER, value="%DOWNSTREAM_PEER_URI_SAN%"
                ),
                HeaderValue(
                    key=envoy_http.SOURCE_ADDRESS_HEADER,
                    value="%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                ),
                # Proves the check comes from this Envoy (the secret's characters
                # exclude '%', so Envoy's formatter leaves it as it is).
                *(
                    [HeaderValue(key=envoy_http.SECRET_HEADER, value=options.http_secret)]
                    if options.http_secret is not None
                    else []
                ),
            ]
        ),
        authorization_response=AuthorizationResponse(
            # Identity headers overwrite client-sent copies on the upstream request.
            allowed_upstream_headers=_exact(policy.headers.all()),
            allowed_client_headers=client,
            allowed_client_headers_on_success=client,
            dynamic_metadata_from_headers=_exact((), (envoy_http.METADATA_PREFIX,)),
        ),
    )


def _ext_authz_filter(policy: PolicyConfig, options: EnvoyOptions) -> HttpFilter:
    if options.transport == "http":
        ext_authz = ExtAuthz(
            http_service=_http_service(policy, options),
            failure_mode_allow=False,  # fail closed
            status_on_error=HttpStatus(code=StatusCode.Forbidden),
            clear_route_cache=False,
            # Only the headers a decision reads (each one Envoy forwards costs it and
            # the service per request); never the ones only Envoy may set.
            allowed_headers=_exact(http_check_headers(policy)),
            disallowed_headers=_exact(envoy_http.TRUSTED_HEADERS),
            stat_prefix="authz",
        )
    else:
        ext_authz = _grpc_ext_authz(options)
    limit = _body_limit(policy)
    if limit:
        # Envoy 1.40 takes pack_as_bytes from the filter, not from a route's settings:
        # without it a body that is not UTF-8 would reach the service with its bad bytes
        # replaced (and validated as something the upstream never gets). So the filter
        # says how bodies are sent, and every route that does not validate its body
        # turns buffering off (_ext_authz_per_route, _no_body).
        ext_authz.with_request_body = _buffer_settings(limit)
    return HttpFilter(name=EXT_AUTHZ_FILTER, typed_config=Any.pack(ext_authz))


def _grpc_ext_authz(options: EnvoyOptions) -> ExtAuthz:
    return ExtAuthz(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=AUTHZ_CLUSTER),
            timeout=_seconds(options.timeout),
        ),
        transport_api_version=ApiVersion.V3,
        failure_mode_allow=False,  # fail closed
        status_on_error=HttpStatus(code=StatusCode.Forbidden),
        include_peer_certificate=True,
        # The service never changes the route; re-routing after authorisation would
        # let a request be authorised for one route and served by another.
        clear_route_cache=False,
        stat_prefix="authz",
    )


def _skips_authz(route: RouteConfig) -> bool:
    """Public routes skip ext_authz, unless authz has a contract or rate limits to apply."""
    return route.public and route.contract is None and not route.rate_limits


def _no_body() -> ExtAuthzPerRoute:
    return ExtAuthzPerRoute(check_settings=CheckSettings(disable_request_body_buffering=True))


def _ext_authz_per_route(route: RouteConfig, policy: PolicyConfig) -> ExtAuthzPerRoute | None:
    """The per-route ext_authz settings of a policy route (None: the filter's own).

    A route whose contract reads the body gets it: buffered up to the contract's
    ``max_body_bytes`` (Envoy answers 413 itself above that, and never sends part of
    a body: ``allow_partial_message: false``), as raw bytes (``pack_as_bytes``: a
    body that is not UTF-8 reaches the service intact, to be refused there). Every
    other route gets no body and no buffering.
    """
    contract = route.contract
    if contract is not None and contract.reads_body:
        return ExtAuthzPerRoute(
            check_settings=CheckSettings(
                with_request_body=_buffer_settings(contract.max_body_bytes)
            )
        )
    if _skips_authz(route):
        return ExtAuthzPerRoute(disabled=True)
    return _no_body() if _body_limit(policy) else None


def _with_per_route(route: Route, per_route: ExtAuthzPerRoute | None) -> Route:
    if per_route is not None:
        route.typed_per_filter_config = {EXT_AUTHZ_FILTER: Any.pack(per_route)}
    return route


def _route_match(route: RouteConfig) -> RouteMatch:
    template = parse_template(route.path)
    if template.is_literal:
        match = RouteMatch(path=route.path)
    else:
        match = RouteMatch(
            path_match_policy=_extension(
                URI_TEMPLATE_MATCHER,
                UriTemplateMatchConfig(path_template=template.envoy_uri_template),
            )
        )
    if "*" not in route.methods:
        methods = sorted(set(route.methods))
        if len(methods) == 1:
            method_matcher = StringMatcher(exact=methods[0])
        else:
            method_matcher = StringMatcher(
                safe_regex=RegexMatcher(regex="|".join(re.escape(m) for m in methods))
            )
        match.headers = [HeaderMatcher(name=":method", string_match=method_matcher)]
    return match


def _envoy_route(route: RouteConfig, policy: PolicyConfig) -> Route:
    envoy_route = Route(
        name=route.name,
        match=_route_match(route),
        route=RouteAction(cluster=UPSTREAM_CLUSTER),
    )
    _with_per_route(envoy_route, _ext_authz_per_route(route, policy))
    if _skips_authz(route):
        # ext_authz is not called here, so nothing else strips forged identity headers.
        envoy_route.request_headers_to_remove = list(policy.headers.all())
    return envoy_route


def _empty_rest_guard(route: RouteConfig) -> Route | None:
    """For a ``{rest=**}`` template, a route for the path with no rest segment at all.

    Envoy's ``**`` also matches zero segments (``/static/`` for ``/static/{rest=**}``),
    the service's needs one or more. Placed just before the template's own route, this
    sends that path to the service (ext_authz on) instead of, on a public route, past it.
    """
    template = parse_template(route.path)
    if not template.segments or template.segments[-1][0] != REST:
        return None
    prefix = template.envoy_uri_template.rsplit("/", 1)[0] + "/"
    if all(kind == LITERAL for kind, _ in template.segments[:-1]):
        match = RouteMatch(path=prefix)
    else:
        match = RouteMatch(
            path_match_policy=_extension(
                URI_TEMPLATE_MATCHER, UriTemplateMatchConfig(path_template=prefix)
            )
        )
    return Route(name=CATCH_ALL_ROUTE, match=match, route=RouteAction(cluster=UPSTREAM_CLUSTER))


def _catch_all() -> Route:
    # Undeclared paths (and declared paths with another method) still reach the
    # service, which answers 404/405 or, in monitor mode, lets them through.
    return Route(
        name=CATCH_ALL_ROUTE,
        match=RouteMatch(prefix="/"),
        route=RouteAction(cluster=UPSTREAM_CLUSTER),
    )


def _check_host(route: RouteConfig, host: str) -> str:
    name = host.lower()
    wildcard = name.startswith("*.")
    rest = name[2:] if wildcard else name
    if not rest or "*" in rest or not _DNS_NAME_RE.match(rest.rstrip(".")):
        where = f" ({route.location})" if route.location else ""
        raise EnvoyConfigError(
            f"route {route.name!r}{where}: host {host!r} is neither a host name nor "
            "'*.' followed by a domain"
        )
    return name


def specificity_order(routes: Sequence[RouteConfig]) -> list[RouteConfig]:
    """Routes most specific first, ties in the given order (as authz.routing does)."""
    return sorted(routes, key=lambda r: parse_template(r.path).sort_key)


def virtual_host_routes(policy: PolicyConfig) -> list[tuple[list[str], list[RouteConfig]]]:
    """(domains, routes in match order) per virtual host; the ``*`` host comes last.

    Mirrors authz.routing.Router: a host's table holds its own routes, then the
    routes for any host; hosts with the same table share a virtual host.
    """
    any_host = [r for r in policy.routes if not r.hosts]
    names: list[str] = []
    own: dict[str, list[RouteConfig]] = {}
    for route in policy.routes:
        for host in route.hosts:
            name = _check_host(route, host)
            if name not in own:
                names.append(name)
                own[name] = []
            if route not in own[name]:
                own[name].append(route)
    groups: dict[tuple[int, ...], tuple[list[str], list[RouteConfig]]] = {}
    index = {id(r): i for i, r in enumerate(policy.routes)}
    for name in names:
        ordered = specificity_order(own[name] + any_host)
        key = tuple(index[id(r)] for r in ordered)
        groups.setdefault(key, ([], ordered))[0].append(name)
    result = list(groups.values())
    result.append(([ANY_HOST], specificity_order(any_host)))
    return result


def _envoy_routes(routes: list[RouteConfig], policy: PolicyConfig) -> list[Route]:
    result = []
    for route in routes:
        guard = _empty_rest_guard(route)
        if guard is not None:
            result.append(guard)
        result.append(_envoy_route(route, policy))
    result.append(_catch_all())
    if _body_limit(policy):
        for envoy_route in result:
            if envoy_route.name == CATCH_ALL_ROUTE:
                _with_per_route(envoy_route, _no_body())
    return result


def _virtual_host_name(domains: list[str]) -> str:
    if domains == [ANY_HOST]:
        return "any_host"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", domains[0]) + (
        f"_and_{len(domains) - 1}_more" if len(domains) > 1 else ""
    )


def _route_configuration(policy: PolicyConfig) -> RouteConfiguration:
    vhosts = []
    for domains, routes in virtual_host_routes(policy):
        vhosts.append(
            VirtualHost(
                name=_virtual_host_name(domains),
                domains=domains,
                routes=_envoy_routes(routes, policy),
            )
        )
    return RouteConfiguration(name="policy_routes", virtual_hosts=vhosts)


def _http_connection_manager(policy: PolicyConfig, options: EnvoyOptions) -> HttpConnectionManager:
    return HttpConnectionManager(
        codec_type=HttpConnectionManagerCodecType.AUTO,
        stat_prefix="ingress_http",
        route_config=_route_configuration(policy),
        http_filters=[
            _ext_authz_filter(policy, options),
            HttpFilter(name=ROUTER_FILTER, typed_config=Any.pack(Router())),
        ],
        common_http_protocol_options=HttpProtocolOptions(
            idle_timeout=_seconds(3600),
            headers_with_underscores_action=(
                HttpProtocolOptionsHeadersWithUnderscoresAction.REJECT_REQUEST
            ),
        ),
        http2_protocol_options=Http2ProtocolOptions(
            max_concurrent_streams=100,
            initial_stream_window_size=65536,
            initial_connection_window_size=1048576,
        ),
        request_headers_timeout=_seconds(10),
        stream_idle_timeout=_seconds(300),
        access_log=[_access_log(options.transport)],
        use_remote_address=True,
        generate_request_id=True,
        preserve_external_request_id=False,
        forward_client_cert_details=HttpConnectionManagerForwardClientCertDetails.SANITIZE,
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action=(
            HttpConnectionManagerPathWithEscapedSlashesAction.REJECT_REQUEST
        ),
        # The service matches hosts without a port; so must the virtual hosts.
        strip_any_host_port=True,
        local_reply_config=_local_reply(options),
    )


def _local_reply(options: EnvoyOptions) -> LocalReplyConfig | None:
    """Over HTTP, a 5xx deny arrives as 403 with its status in metadata: restore it."""
    if options.transport != "http":
        return None
    mappers = []
    for status in envoy_http.RESTORED_STATUSES:
        matcher = MetadataMatcher(
            filter=EXT_AUTHZ_FILTER,
            path=[MetadataMatcherPathSegment(key=envoy_http.STATUS_HEADER)],
            value=ValueMatcher(string_match=StringMatcher(exact=str(status))),
        )
        mappers.append(
            ResponseMapper(
                # (a missing key matches unless match_if_key_not_found is false)
                filter=AccessLogFilter(
                    metadata_filter=MetadataFilter(matcher=matcher, match_if_key_not_found=False)
                ),
                status_code=status,
            )
        )
    return LocalReplyConfig(mappers=mappers)


def _cluster(name: str, target: HostPort, *, grpc: bool, authz: bool = False) -> Cluster:
    """A static (or DNS) cluster; ``grpc``: HTTP/2 with gRPC health checks; ``authz``
    without ``grpc``: the HTTP transport, health-checked with ``GET /healthz``."""
    cluster = Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if target.is_ip else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=_seconds(1),
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_socket(target)))]
                )
            ],
        ),
    )
    if grpc:
        cluster.typed_extension_protocol_options = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": Any.pack(
                UpstreamHttpProtocolOptions(
                    explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                        http2_protocol_options=Http2ProtocolOptions()
                    )
                )
            )
        }
        # grpc.health.v1 with the empty service name: the server's overall health.
        cluster.health_checks = [
            HealthCheck(
                timeout=_seconds(1),
                interval=_seconds(5),
                unhealthy_threshold=2,
                healthy_threshold=1,
                grpc_health_check=HealthCheckGrpcHealthCheck(),
            )
        ]
    elif authz:
        # Envoy closes its idle connections to the service (30 s) before the service
        # would (its --http-idle-timeout, 75 s by default): a check is then never sent
        # on a connection the service is closing.
        cluster.typed_extension_protocol_options = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": Any.pack(
                UpstreamHttpProtocolOptions(
                    common_http_protocol_options=HttpProtocolOptions(
                        idle_timeout=_seconds(AUTHZ_HTTP_IDLE_TIMEOUT)
                    ),
                    explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                        http_protocol_options=Http1ProtocolOptions()
                    ),
                )
            )
        }
        cluster.health_checks = [
            HealthCheck(
                timeout=_seconds(1),
                interval=_seconds(5),
                unhealthy_threshold=2,
                healthy_threshold=1,
                http_health_check=HealthCheckHttpHealthCheck(path=envoy_http.HEALTH_PATH),
            )
        ]
    return cluster


def _downstream_tls(tls: TlsOptions) -> TransportSocket:
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


def _overload_manager() -> OverloadManager:
    return OverloadManager(
        resource_monitors=[
            ResourceMonitor(
                name="envoy.resource_monitors.global_downstream_max_connections",
                typed_config=Any.pack(
                    DownstreamConnectionsConfig(max_active_downstream_connections=50000)
                ),
            )
        ]
    )


def build_bootstrap_message(policy: PolicyConfig, options: EnvoyOptions) -> Bootstrap:
    """The typed Envoy v3 bootstrap for ``policy`` deployed as ``options`` says."""
    hcm = _http_connection_manager(policy, options)
    chain = FilterChain(
        filters=[
            Filter(
                name="envoy.filters.network.http_connection_manager",
                typed_config=Any.pack(hcm),
            )
        ]
    )
    if options.tls is not None:
        chain.transport_socket = _downstream_tls(options.tls)
    listener = Listener(
        name="ingress",
        address=_socket(options.listen),
        per_connection_buffer_limit_bytes=32768,
        filter_chains=[chain],
    )
    return Bootstrap(
        node=Node(id="authz-envoy", cluster="authz-envoy"),
        static_resources=BootstrapStaticResources(
            listeners=[listener],
            clusters=[
                _cluster(
                    AUTHZ_CLUSTER, options.authz, grpc=options.transport == "grpc", authz=True
                ),
                _cluster(UPSTREAM_CLUSTER, options.upstream, grpc=False),
            ],
        ),
        admin=Admin(address=_socket(options.admin)),
        overload_manager=_overload_manager(),
    )


def _add_explicit_defaults(node: object) -> None:
    if isinstance(node, dict):
        for key, value in _EXPLICIT_DEFAULTS.get(str(node.get("@type", "")), {}).items():
            node.setdefault(key, value)
        body = node.get("with_request_body")
        if isinstance(body, dict):
            # The safety of body validation rests on this default: say it.
            body.setdefault("allow_partial_message", False)
        for child in node.values():
            _add_explicit_defaults(child)
    elif isinstance(node, list):
        for child in node:
            _add_explicit_defaults(child)


def build_bootstrap(policy: PolicyConfig, options: EnvoyOptions) -> dict[str, AnyType]:
    """A plain JSON-able dict of the Envoy v3 bootstrap (snake_case, ``@type`` on Any).

    Raises EnvoyConfigError when the policy cannot be expressed safely.
    """
    config = build_bootstrap_message(policy, options).to_dict(casing=betterproto2.Casing.SNAKE)
    _add_explicit_defaults(config)
    return config


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


def render_yaml(config: dict[str, AnyType], *, header: str = "") -> str:
    """YAML text of a bootstrap dict, fields in proto order, ``header`` as ``#`` lines."""
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=100)
    lines = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return lines + body


# ---------------------------------------------------------------------------------------
# Command line


def _arg_type(parse: Callable[[str], object], what: str) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid {what}: {exc}") from None

    convert.__name__ = what
    return convert


_DEFAULTS = EnvoyOptions()


def _readable_file(text: str) -> str:
    try:
        with open(text, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {text}: {exc.strerror or exc}") from None
    return text


def add_envoy_config_parser(subparsers: argparse._SubParsersAction[AnyType]) -> None:
    """Register ``envoy-config POLICY`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "envoy-config",
        help="print the Envoy bootstrap (YAML) that fronts this service for a policy",
        description="Generate an Envoy v3 bootstrap: ext_authz (fail closed) to the authz "
        "service, the policy's routes in specificity order, public routes without authz.",
    )
    p.add_argument("policy", metavar="POLICY", help="the policy file")
    hp = _arg_type(parse_host_port, "HOST:PORT")
    for name, what in (
        ("listen", "where Envoy listens"),
        ("upstream", "the protected service"),
        ("authz", "the authz service (its --grpc address, or --http with --transport http)"),
        ("admin", "Envoy's admin interface"),
    ):
        default = getattr(_DEFAULTS, name)
        p.add_argument(
            f"--{name}", type=hp, default=default, metavar="HOST:PORT",
            help=f"{what} (default {default})",
        )  # fmt: skip
    p.add_argument(
        "--timeout", type=_arg_type(parse_timeout, "duration"), default=_DEFAULTS.timeout,
        metavar="DURATION",
        help="how long Envoy waits for a decision before denying, e.g. 0.5s or 500ms "
        f"(default {_DEFAULTS.timeout:g}s)",
    )  # fmt: skip
    tls = p.add_argument_group(
        "downstream TLS",
        "Envoy terminates TLS; with --client-ca, mutual TLS: client certificates (SPIFFE "
        "X.509-SVIDs) are verified against the bundle and the verified identity is sent to "
        "the service (attributes.source.principal and .certificate). The paths are written "
        "into the config as given.",
    )
    readable = _arg_type(_readable_file, "file")
    tls.add_argument(
        "--tls-cert", type=readable, metavar="FILE",
        help="Envoy's certificate chain (PEM); needs --tls-key",
    )  # fmt: skip
    tls.add_argument("--tls-key", type=readable, metavar="FILE", help="its private key (PEM)")
    tls.add_argument(
        "--client-ca", type=readable, metavar="FILE",
        help="trust bundle (PEM) that client certificates must verify against",
    )  # fmt: skip
    tls.add_argument(
        "--client-cert", choices=("optional", "required"), default=None,
        help="with --client-ca: refuse clients without a certificate (required, the "
        "default) or let them through unauthenticated by TLS (optional); a certificate "
        "that does not verify is refused either way",
    )  # fmt: skip
    p.add_argument(
        "--transport", choices=TRANSPORTS, default=_DEFAULTS.transport,
        help="how Envoy calls the service: grpc (ext_authz gRPC, `authz serve --grpc`) or "
        "http (ext_authz http_service, `authz serve --http`; --authz is then that port)",
    )  # fmt: skip
    p.add_argument(
        "--http-secret-file", type=readable, metavar="FILE",
        help="with --transport http: Envoy sends this file's secret on every check (the "
        "file `authz serve --http-secret-file` reads); the config then holds the secret",
    )  # fmt: skip
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=run)


def _tls_from_args(args: argparse.Namespace) -> TlsOptions | None:
    cert = getattr(args, "tls_cert", None)
    key = getattr(args, "tls_key", None)
    client_ca = getattr(args, "client_ca", None)
    client_cert = getattr(args, "client_cert", None)
    if cert is None and key is None:
        if client_ca is not None or client_cert is not None:
            flag = "--client-ca" if client_ca is not None else "--client-cert"
            raise EnvoyConfigError(f"{flag} needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise EnvoyConfigError("--tls-cert and --tls-key go together")
    if client_cert is not None and client_ca is None:
        raise EnvoyConfigError("--client-cert needs --client-ca (the bundle to verify against)")
    return TlsOptions(
        cert_chain=cert,
        private_key=key,
        client_ca=client_ca,
        require_client_cert=None if client_cert is None else client_cert == "required",
    )


def _secret_from_args(args: argparse.Namespace) -> str | None:
    path = getattr(args, "http_secret_file", None)
    if path is None:
        return None
    if getattr(args, "transport", _DEFAULTS.transport) != "http":
        raise EnvoyConfigError("--http-secret-file needs --transport http")
    try:
        return envoy_http.read_secret_file(path)
    except ValueError as exc:
        raise EnvoyConfigError(f"--http-secret-file {exc}") from None


def options_from_args(args: argparse.Namespace) -> EnvoyOptions:
    """EnvoyOptions from parsed arguments; EnvoyConfigError for combinations that make no sense."""
    return EnvoyOptions(
        listen=args.listen,
        upstream=args.upstream,
        authz=args.authz,
        admin=args.admin,
        timeout=args.timeout,
        tls=_tls_from_args(args),
        transport=getattr(args, "transport", _DEFAULTS.transport),
        http_secret=_secret_from_args(args),
    )


def command_line(args: argparse.Namespace) -> str:
    """The shortest ``authz envoy-config`` command that reproduces ``args``."""
    parts = ["authz", "envoy-config", args.policy]
    opts = options_from_args(args)
    for name in ("listen", "upstream", "authz", "admin"):
        value = getattr(opts, name)
        if value != getattr(_DEFAULTS, name):
            parts += [f"--{name}", str(value)]
    if opts.timeout != _DEFAULTS.timeout:
        parts += ["--timeout", f"{opts.timeout:g}s"]
    if opts.transport != _DEFAULTS.transport:
        parts += ["--transport", opts.transport]
    if opts.http_secret is not None:
        parts += ["--http-secret-file", args.http_secret_file]
    if opts.tls is not None:
        parts += ["--tls-cert", opts.tls.cert_chain, "--tls-key", opts.tls.private_key]
        if opts.tls.client_ca is not None:
            parts += ["--client-ca", opts.tls.client_ca]
            if not opts.tls.require_client_cert:
                parts += ["--client-cert", "optional"]
    if args.output:
        parts += ["-o", args.output]
    return " ".join(parts)


def generate(policy: PolicyConfig, args: argparse.Namespace) -> str:
    """The file ``authz envoy-config`` writes for these arguments."""
    options = options_from_args(args)
    header = (
        f"Envoy v3 bootstrap generated by `authz envoy-config` from {args.policy}\n"
        f"(policy version {policy.version}). Do not edit; regenerate with:\n"
        f"  {command_line(args)}\n"
        f"Check with: envoy --mode validate -c {args.output or 'FILE'}\n"
    )
    if options.http_secret is not None:
        header += "It holds the HTTP transport secret: keep it as private as that file.\n"
    return render_yaml(build_bootstrap(policy, options), header=header)


def run(args: argparse.Namespace) -> int:
    """``authz envoy-config``: 0 on success, 1 when the policy or output is unusable,
    2 when the options are (e.g. a TLS file that is missing or not what it should be)."""
    from authz.errors import PolicyError
    from authz.policy.loader import load_policy

    try:
        options = options_from_args(args)
        if options.tls is not None:
            check_tls_files(options.tls)
    except EnvoyConfigError as exc:
        print(f"authz envoy-config: error: {exc}", file=sys.stderr)
        return 2
    try:
        policy: PolicyConfig = load_policy(args.policy)
    except PolicyError as exc:
        for location, message in exc.problems:
            print(f"{location}: {message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.policy}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        text = generate(policy, args)
    except EnvoyConfigError as exc:
        print(f"{args.policy}: {exc}", file=sys.stderr)
        return 1
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    try:
        tmp = out.with_name(f".{out.name}.tmp")
        # A config holding the transport secret is readable by its owner only.
        mode = 0o600 if getattr(args, "http_secret_file", None) else 0o644
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        tmp.replace(out)
    except OSError as exc:
        print(f"{args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m authz.envoy_config POLICY ...``: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog="authz")
    add_envoy_config_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["envoy-config", *(sys.argv[1:] if argv is None else argv)])
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
