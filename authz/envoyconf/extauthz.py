"""The ext_authz filter: over gRPC or HTTP (which headers a check carries, the
transport secret), fail closed, and per route whether the body is sent (only where a
contract validates it) or the filter is off (public routes with nothing to check)."""

from __future__ import annotations

from collections.abc import Sequence

from envoy_data_plane.envoy.config.core.v3 import (
    ApiVersion,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    HttpUri,
)
from envoy_data_plane.envoy.config.route.v3 import (
    Route,
)
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import (
    AuthorizationRequest,
    AuthorizationResponse,
    BufferSettings,
    CheckSettings,
    ExtAuthz,
    ExtAuthzPerRoute,
    HttpService,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpFilter,
)
from envoy_data_plane.envoy.type.matcher.v3 import (
    ListStringMatcher,
    StringMatcher,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any

from authz.envoyconf.common import AUTHZ_CLUSTER, EXT_AUTHZ_FILTER, seconds
from authz.envoyconf.options import EnvoyOptions
from authz.hygiene import check_headers
from authz.policy.config import (
    ApiKeyProviderConfig,
    IntrospectionProviderConfig,
    JwtProviderConfig,
    PolicyConfig,
    RouteConfig,
)
from authz.transport import envoy_http


def metadata_key(key: str, transport: str) -> str:
    """The ext_authz dynamic metadata key of ``key`` as this transport delivers it."""
    return envoy_http.metadata_header(key) if transport == "http" else key


def body_limit(policy: PolicyConfig) -> int:
    """The largest body any route's contract reads (0: no route reads bodies)."""
    return max(
        (r.contract.max_body_bytes for r in policy.routes if r.contract and r.contract.reads_body),
        default=0,
    )


def buffer_settings(max_bytes: int) -> BufferSettings:
    return BufferSettings(
        max_request_bytes=max_bytes, allow_partial_message=False, pack_as_bytes=True
    )


def exact_headers(names: Sequence[str], prefixes: Sequence[str] = ()) -> ListStringMatcher:
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

    Each provider's credential header (and ``DPoP`` when one takes DPoP proofs), the
    headers route contracts declare as
    parameters, the headers rate-limit keys name (and X-Forwarded-For when hops are
    trusted), plus :data:`HTTP_CHECK_HEADERS`. Derived from the policy, so a stage
    that reads a header the policy names gets it without a change here.
    """
    names = [
        p.header.lower()
        for p in policy.providers
        if isinstance(p, JwtProviderConfig | ApiKeyProviderConfig | IntrospectionProviderConfig)
    ]
    names += HTTP_CHECK_HEADERS
    if any(isinstance(p, JwtProviderConfig) and p.dpop is not None for p in policy.providers):
        names.append("dpop")  # the RFC 9449 proof
    for route in policy.routes:
        if route.contract is not None:
            names += [p.name for p in route.contract.parameters if p.where == "header"]
    names += check_headers(policy)[0]
    limits = policy.rate_limits
    for rule in (*limits.rules, *(r for route in policy.routes for r in route.rate_limits)):
        names += [part[len("header:") :].lower() for part in rule.key if part.startswith("header:")]
    if limits.trusted_hops > 0:
        names.append("x-forwarded-for")
    return list(dict.fromkeys(n for n in names if n not in envoy_http.TRUSTED_HEADERS))


def _http_service(policy: PolicyConfig, options: EnvoyOptions) -> HttpService:
    """ext_authz over HTTP (see :mod:`authz.transport.envoy_http` for the protocol)."""
    client = exact_headers(envoy_http.CLIENT_HEADERS, envoy_http.CLIENT_HEADER_PREFIXES)
    return HttpService(
        server_uri=HttpUri(
            uri=f"http://{options.authz}",
            cluster=AUTHZ_CLUSTER,
            timeout=seconds(options.timeout),
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
                # The client certificate (URL-encoded PEM) for certificate-bound
                # tokens (RFC 8705); left out without one.
                HeaderValue(key=envoy_http.PEER_CERTIFICATE_HEADER, value="%DOWNSTREAM_PEER_CERT%"),
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
            allowed_upstream_headers=exact_headers(policy.headers.all()),
            allowed_client_headers=client,
            allowed_client_headers_on_success=client,
            dynamic_metadata_from_headers=exact_headers((), (envoy_http.METADATA_PREFIX,)),
        ),
    )


def ext_authz_filter(policy: PolicyConfig, options: EnvoyOptions) -> HttpFilter:
    if options.transport == "http":
        ext_authz = ExtAuthz(
            http_service=_http_service(policy, options),
            failure_mode_allow=False,  # fail closed
            status_on_error=HttpStatus(code=StatusCode.Forbidden),
            clear_route_cache=False,
            # Only the headers a decision reads (each one Envoy forwards costs it and
            # the service per request); never the ones only Envoy may set.
            allowed_headers=exact_headers(http_check_headers(policy), check_headers(policy)[1]),
            disallowed_headers=exact_headers(envoy_http.TRUSTED_HEADERS),
            stat_prefix="authz",
        )
    else:
        ext_authz = _grpc_ext_authz(options)
    limit = body_limit(policy)
    if limit:
        # Envoy 1.40 takes pack_as_bytes from the filter, not from a route's settings:
        # without it a body that is not UTF-8 would reach the service with its bad bytes
        # replaced (and validated as something the upstream never gets). So the filter
        # says how bodies are sent, and every route that does not validate its body
        # turns buffering off (ext_authz_per_route, no_body).
        ext_authz.with_request_body = buffer_settings(limit)
    return HttpFilter(name=EXT_AUTHZ_FILTER, typed_config=Any.pack(ext_authz))


def _grpc_ext_authz(options: EnvoyOptions) -> ExtAuthz:
    return ExtAuthz(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=AUTHZ_CLUSTER),
            timeout=seconds(options.timeout),
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


def skips_authz(route: RouteConfig, policy: PolicyConfig | None = None) -> bool:
    """Public routes skip ext_authz, unless authz has a contract or rate limits to
    apply, or the policy's ``enforcement.public_routes`` is ``check`` (blocks of an
    address then reach public routes too)."""
    if not route.public or route.contract is not None or route.rate_limits:
        return False
    enforcement = policy.enforcement if policy is not None else None
    return enforcement is None or enforcement.public_routes != "check"


def no_body() -> ExtAuthzPerRoute:
    return ExtAuthzPerRoute(check_settings=CheckSettings(disable_request_body_buffering=True))


def ext_authz_per_route(route: RouteConfig, policy: PolicyConfig) -> ExtAuthzPerRoute | None:
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
            check_settings=CheckSettings(with_request_body=buffer_settings(contract.max_body_bytes))
        )
    if skips_authz(route, policy):
        return ExtAuthzPerRoute(disabled=True)
    return no_body() if body_limit(policy) else None


def with_per_route(route: Route, per_route: ExtAuthzPerRoute | None) -> Route:
    if per_route is not None:
        route.typed_per_filter_config = {EXT_AUTHZ_FILTER: Any.pack(per_route)}
    return route
