"""Envoy's gRPC access log to the service (``authz envoy-config --access-log HOST:PORT``).

``envoy.access_loggers.http_grpc`` streams every request's log entry, public routes
included, to the service's access-log port (``authz serve --access-log-grpc``). The
entry carries the request's dynamic metadata, where the ext_authz answer left its
decision id (gRPC: ``dynamic_metadata``; HTTP: the ``x-authz-meta-*`` headers through
``dynamic_metadata_from_headers``): that is how the service joins the upstream's
status, size and latency to its decision (:mod:`authz.transport.envoy_als`).

Envoy sends entries in batches (every :data:`FLUSH_INTERVAL` seconds, or sooner when
:data:`BUFFER_BYTES` are pending). When the service's port is down Envoy drops the
entries (its ``access_logs.grpc_access_log.logs_dropped`` counter) and reconnects:
a log sink never holds a request up, so losing the feed never changes a decision.
"""

from __future__ import annotations

from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.core.v3 import (
    ApiVersion,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
)
from envoy_data_plane.envoy.extensions.access_loggers.grpc.v3 import (
    CommonGrpcAccessLogConfig,
    HttpGrpcAccessLogConfig,
)
from envoy_data_plane.envoy.type.metadata.v3 import (
    MetadataKey,
    MetadataKeyPathSegment,
    MetadataKind,
    MetadataKindRequest,
)
from envoy_data_plane.envoy.type.tracing.v3 import CustomTag, CustomTagMetadata
from envoy_data_plane.google.protobuf import Any

from authz.envoyconf.common import ACCESS_LOG_CLUSTER, EXT_AUTHZ_FILTER, seconds
from authz.envoyconf.extauthz import metadata_key
from authz.transport.envoy_als import DECISION_ID_TAG
from authz.transport.envoy_http import SECRET_HEADER

#: Envoy's logger name, and the log name the service sees in the stream's identifier.
HTTP_GRPC_LOGGER = "envoy.access_loggers.http_grpc"
LOG_NAME = "authz"
#: Seconds between Envoy's flushes of buffered entries (Envoy's default: 1 s).
FLUSH_INTERVAL = 0.25
#: Pending bytes that make Envoy flush before the interval (Envoy's default).
BUFFER_BYTES = 16384


def decision_id_tag(transport: str) -> CustomTag:
    """The entry's tag holding the decision id, which Envoy fills from ext_authz's
    dynamic metadata: the service reads it with one string lookup instead of walking the
    metadata Struct (which Envoy sends too, and is read when the tag is absent)."""
    return CustomTag(
        tag=DECISION_ID_TAG,
        metadata=CustomTagMetadata(
            kind=MetadataKind(request=MetadataKindRequest()),
            metadata_key=MetadataKey(
                key=EXT_AUTHZ_FILTER,
                path=[MetadataKeyPathSegment(key=metadata_key("decision_id", transport))],
            ),
        ),
    )


def grpc_access_log(transport: str = "grpc", secret: str | None = None) -> AccessLog:
    """The access logger that streams every entry to :data:`ACCESS_LOG_CLUSTER`; with
    ``secret``, the stream carries it (``x-authz-transport-secret`` metadata)."""
    service = GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=ACCESS_LOG_CLUSTER))
    if secret is not None:
        service.initial_metadata = [HeaderValue(key=SECRET_HEADER, value=secret)]
    config = HttpGrpcAccessLogConfig(
        common_config=CommonGrpcAccessLogConfig(
            log_name=LOG_NAME,
            grpc_service=service,
            transport_api_version=ApiVersion.V3,
            buffer_flush_interval=seconds(FLUSH_INTERVAL),
            buffer_size_bytes=BUFFER_BYTES,
            custom_tags=[decision_id_tag(transport)],
        )
    )
    return AccessLog(name=HTTP_GRPC_LOGGER, typed_config=Any.pack(config))
