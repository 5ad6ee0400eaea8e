"""Envoy's own spans (``authz envoy-config --tracing HOST:PORT``).

The connection manager traces every request with the OpenTelemetry tracer
(``envoy.tracers.opentelemetry``), exporting over OTLP gRPC through the
:data:`~authz.envoyconf.common.TRACING_CLUSTER` cluster to the collector the
service exports to (``authz serve --otlp-endpoint http://HOST:PORT --tracing``).
Envoy then propagates W3C ``traceparent`` to ext_authz (the gRPC call's metadata,
or the headers of the HTTP check) and upstream: one trace shows Envoy, authz and
the upstream. Envoy samples every request it starts a trace for (``random_sampling``
100%); the service's decision spans follow the parent's sampled flag by default
(``--trace-sampling``, :mod:`authz.telemetry.tracing`).
"""

from __future__ import annotations

from envoy_data_plane.envoy.config.core.v3 import GrpcService, GrpcServiceEnvoyGrpc
from envoy_data_plane.envoy.config.trace.v3 import OpenTelemetryConfig, TracingHttp
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManagerTracing,
)
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any

from authz.envoyconf.common import TRACING_CLUSTER, seconds

#: Envoy's tracer extension, and the service.name its spans carry
TRACER = "envoy.tracers.opentelemetry"
SERVICE_NAME = "envoy"


def hcm_tracing() -> HttpConnectionManagerTracing:
    """The connection manager's tracing block: OpenTelemetry over OTLP gRPC."""
    config = OpenTelemetryConfig(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=TRACING_CLUSTER), timeout=seconds(1)
        ),
        service_name=SERVICE_NAME,
    )
    return HttpConnectionManagerTracing(
        random_sampling=Percent(value=100.0),
        provider=TracingHttp(name=TRACER, typed_config=Any.pack(config)),
    )
