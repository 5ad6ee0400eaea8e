"""Names shared by the config builders: filter, cluster and route names, the error, and
small constructors for typed extensions, durations and socket addresses."""

from __future__ import annotations

import datetime

import betterproto2
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    SocketAddress,
    TypedExtensionConfig,
)
from envoy_data_plane.google.protobuf import Any

from authz.units import HostPort

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"


ROUTER_FILTER = "envoy.filters.http.router"


TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"


URI_TEMPLATE_MATCHER = "envoy.path.match.uri_template.uri_template_matcher"


AUTHZ_CLUSTER = "authz"


UPSTREAM_CLUSTER = "upstream"


#: The cluster of the service's access-log port (``authz serve --access-log-grpc``).
ACCESS_LOG_CLUSTER = "authz_access_log"
#: The OTLP collector Envoy sends its spans to (``--tracing``).
TRACING_CLUSTER = "otel_collector"


CATCH_ALL_ROUTE = "undeclared"


ANY_HOST = "*"


#: Seconds before Envoy closes an idle connection to the HTTP transport; below the
#: service's default --http-idle-timeout.
AUTHZ_HTTP_IDLE_TIMEOUT = 30


class EnvoyConfigError(ValueError):
    """The policy or options cannot be expressed as a safe Envoy config."""


def seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def socket_address(hp: HostPort) -> Address:
    return Address(socket_address=SocketAddress(address=hp.host, port_value=hp.port))


def extension(name: str, message: betterproto2.Message) -> TypedExtensionConfig:
    return TypedExtensionConfig(name=name, typed_config=Any.pack(message))
