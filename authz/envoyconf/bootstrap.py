"""The bootstrap: listener, connection manager (normalisation, access log, local
replies), clusters and overload manager, put together from the other modules, and its
serialisation to the JSON/YAML Envoy reads."""

from __future__ import annotations

from typing import Any as AnyType

import betterproto2
import yaml
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog, AccessLogFilter, MetadataFilter
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterLbPolicy
from envoy_data_plane.envoy.config.core.v3 import (
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    HealthCheckHttpHealthCheck,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    HttpProtocolOptionsHeadersWithUnderscoresAction,
    Node,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.overload.v3 import OverloadManager, ResourceMonitor
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
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
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3 import (
    DownstreamConnectionsConfig,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions as UpstreamHttpProtocolOptions,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import (
    MetadataMatcher,
    MetadataMatcherPathSegment,
    StringMatcher,
    ValueMatcher,
)
from envoy_data_plane.google.protobuf import Any, Struct

from authz.envoyconf.accesslog import grpc_access_log
from authz.envoyconf.common import (
    ACCESS_LOG_CLUSTER,
    AUTHZ_CLUSTER,
    AUTHZ_HTTP_IDLE_TIMEOUT,
    EXT_AUTHZ_FILTER,
    ROUTER_FILTER,
    TRACING_CLUSTER,
    UPSTREAM_CLUSTER,
    seconds,
    socket_address,
)
from authz.envoyconf.extauthz import ext_authz_filter, metadata_key
from authz.envoyconf.options import EnvoyOptions
from authz.envoyconf.routes import route_configuration
from authz.envoyconf.tls import downstream_tls, with_policy_trust_bundles
from authz.envoyconf.tracing import hcm_tracing
from authz.envoyconf.upstream_tls import upstream_tls
from authz.policy.config import (
    PolicyConfig,
)
from authz.transport import envoy_http
from authz.units import HostPort

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


def _access_log(transport: str = "grpc") -> AccessLog:
    meta = {
        key: f"%DYNAMIC_METADATA({EXT_AUTHZ_FILTER}:{metadata_key(key, transport)})%"
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


def _http_connection_manager(policy: PolicyConfig, options: EnvoyOptions) -> HttpConnectionManager:
    return HttpConnectionManager(
        codec_type=HttpConnectionManagerCodecType.AUTO,
        stat_prefix="ingress_http",
        route_config=route_configuration(policy),
        http_filters=[
            ext_authz_filter(policy, options),
            HttpFilter(name=ROUTER_FILTER, typed_config=Any.pack(Router())),
        ],
        common_http_protocol_options=HttpProtocolOptions(
            idle_timeout=seconds(3600),
            headers_with_underscores_action=(
                HttpProtocolOptionsHeadersWithUnderscoresAction.REJECT_REQUEST
            ),
        ),
        http2_protocol_options=Http2ProtocolOptions(
            max_concurrent_streams=100,
            initial_stream_window_size=65536,
            initial_connection_window_size=1048576,
        ),
        request_headers_timeout=seconds(10),
        stream_idle_timeout=seconds(300),
        access_log=[
            _access_log(options.transport),
            *(
                [grpc_access_log(options.transport, options.access_log_secret)]
                if options.access_log is not None
                else []
            ),
        ],
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
        tracing=hcm_tracing() if options.tracing is not None else None,
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


def _health_checks(**check: AnyType) -> list[HealthCheck]:
    """Every 5 s, 1 s to answer; down after 2 failures, up after 1 success."""
    return [
        HealthCheck(
            timeout=seconds(1), interval=seconds(5), unhealthy_threshold=2, healthy_threshold=1,
            **check,
        )
    ]  # fmt: skip


def _upstream_protocol(options: UpstreamHttpProtocolOptions) -> dict[str, Any]:
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": Any.pack(options)}


def _cluster(
    name: str, target: HostPort, *, grpc: bool, authz: bool = False, health: bool = True
) -> Cluster:
    """A static (or DNS) cluster; ``grpc``: HTTP/2 with gRPC health checks (unless not
    ``health``); ``authz`` without ``grpc``: the HTTP transport, health-checked with
    ``GET /healthz``."""
    cluster = Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if target.is_ip else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=seconds(1),
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=socket_address(target)))]
                )
            ],
        ),
    )
    if grpc:
        cluster.typed_extension_protocol_options = _upstream_protocol(
            UpstreamHttpProtocolOptions(
                explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                    http2_protocol_options=Http2ProtocolOptions()
                )
            )
        )
        # grpc.health.v1 with the empty service name: the server's overall health.
        if health:
            cluster.health_checks = _health_checks(grpc_health_check=HealthCheckGrpcHealthCheck())
    elif authz:
        # Envoy closes its idle connections to the service (30 s) before the service
        # would (its --http-idle-timeout, 75 s by default): a check is then never sent
        # on a connection the service is closing.
        cluster.typed_extension_protocol_options = _upstream_protocol(
            UpstreamHttpProtocolOptions(
                common_http_protocol_options=HttpProtocolOptions(
                    idle_timeout=seconds(AUTHZ_HTTP_IDLE_TIMEOUT)
                ),
                explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                    http_protocol_options=Http1ProtocolOptions()
                ),
            )
        )
        cluster.health_checks = _health_checks(
            http_health_check=HealthCheckHttpHealthCheck(path=envoy_http.HEALTH_PATH)
        )
    return cluster


def _authz_cluster(options: EnvoyOptions) -> Cluster:
    """The service's cluster; over TLS (mTLS with a client certificate) when asked."""
    grpc = options.transport == "grpc"
    cluster = _cluster(AUTHZ_CLUSTER, options.authz, grpc=grpc, authz=True)
    if options.authz_tls is not None:
        cluster.transport_socket = upstream_tls(options.authz_tls, options.authz, grpc=grpc)
    return cluster


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
    tls = with_policy_trust_bundles(options.tls, policy.providers)
    if tls is not None:
        chain.transport_socket = downstream_tls(tls)
    listener = Listener(
        name="ingress",
        address=socket_address(options.listen),
        per_connection_buffer_limit_bytes=32768,
        filter_chains=[chain],
    )
    return Bootstrap(
        node=Node(id="authz-envoy", cluster="authz-envoy"),
        static_resources=BootstrapStaticResources(
            listeners=[listener],
            clusters=[
                _authz_cluster(options),
                _cluster(UPSTREAM_CLUSTER, options.upstream, grpc=False),
                # (no health checks: a log sink that is down only loses entries)
                *(
                    [_cluster(ACCESS_LOG_CLUSTER, options.access_log, grpc=True, health=False)]
                    if options.access_log is not None
                    else []
                ),
                *(
                    [_cluster(TRACING_CLUSTER, options.tracing, grpc=True, health=False)]
                    if options.tracing is not None
                    else []
                ),
            ],
        ),
        admin=Admin(address=socket_address(options.admin)),
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


class _Dumper(yaml.SafeDumper):
    """Quotes the strings a YAML 1.1 reader takes for booleans and PyYAML does not.

    Envoy reads ``y``, ``n`` (any case) unquoted as true/false, so a route named ``y``
    made a config Envoy refused to load.
    """


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if value.lower() in ("y", "n"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'")
    return dumper.represent_str(value)


_Dumper.add_representer(str, _str)


def render_yaml(config: dict[str, AnyType], *, header: str = "") -> str:
    """YAML text of a bootstrap dict, fields in proto order, ``header`` as ``#`` lines."""
    body = yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    lines = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return lines + body
