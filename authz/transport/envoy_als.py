"""Envoy's gRPC access-log entries -> :class:`~authz.detect.events.ResponseObservation`.

Envoy's ``envoy.access_loggers.http_grpc`` logger streams
``envoy.data.accesslog.v3.HTTPAccessLogEntry`` messages to
``envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs``
(:mod:`authz.transport.als_server`). Each entry carries the request's dynamic metadata,
so the ext_authz answer's decision id comes back with the upstream's status: that id
is the join between a decision and what the upstream answered.

- Over gRPC the decision id is ``CheckResponse.dynamic_metadata["decision_id"]``;
  over HTTP it is the ``x-authz-meta-decision-id`` response header, which the
  generated config turns into metadata (``dynamic_metadata_from_headers``). Both land
  in the ``envoy.filters.http.ext_authz`` namespace; this reads either key.
- A public route the generated config does not send to ext_authz has no such
  metadata: its observation has ``decision_id`` "" and the route name Envoy logged.

Like :mod:`authz.transport.envoy_grpc`, this is one of the few modules that know
about protobuf; the feed (:mod:`authz.feedback`) only sees the plain tuples.
"""

from __future__ import annotations

import contextlib
import time

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from authz.detect.events import ResponseObservation
from authz.errors import InvalidPath
from authz.paths import canonicalize
from authz.transport import envoy_http

HTTPAccessLogEntry = accesslog_pb2.HTTPAccessLogEntry
StreamAccessLogsMessage = als_pb2.StreamAccessLogsMessage
StreamAccessLogsResponse = als_pb2.StreamAccessLogsResponse

#: The gRPC service Envoy's access logger calls.
ACCESS_LOG_SERVICE = als_pb2.DESCRIPTOR.services_by_name["AccessLogService"].full_name
#: The dynamic-metadata namespace the ext_authz filter writes (both transports).
EXT_AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
#: The decision id's key in that namespace: over gRPC, then over HTTP.
DECISION_ID_KEYS = ("decision_id", envoy_http.metadata_header("decision_id"))
#: The custom tag ``authz envoy-config --access-log`` fills with the decision id.
DECISION_ID_TAG = "decision_id"
#: Longest path kept from a log entry (a path that does not canonicalise is kept raw).
MAX_PATH = 2048

#: ``ResponseFlags`` field -> Envoy's short code (as ``%RESPONSE_FLAGS%`` prints it).
RESPONSE_FLAG_CODES: dict[str, str] = {
    "failed_local_healthcheck": "LH",
    "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT",
    "local_reset": "LR",
    "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF",
    "upstream_connection_termination": "UC",
    "upstream_overflow": "UO",
    "no_route_found": "NR",
    "delay_injected": "DI",
    "fault_injected": "FI",
    "rate_limited": "RL",
    "unauthorized_details": "UAEX",
    "rate_limit_service_error": "RLSE",
    "downstream_connection_termination": "DC",
    "upstream_retry_limit_exceeded": "URX",
    "stream_idle_timeout": "SI",
    "invalid_envoy_request_headers": "IH",
    "downstream_protocol_error": "DPE",
    "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF",
    "no_filter_config_found": "NFCF",
    "duration_timeout": "DT",
    "upstream_protocol_error": "UPE",
    "no_cluster_found": "NC",
    "overload_manager": "OM",
    "dns_resolution_failure": "DF",
    "downstream_remote_reset": "DR",
}

_METHOD_ENUM = accesslog_pb2.HTTPRequestProperties.DESCRIPTOR.fields_by_name[
    "request_method"
].enum_type  # envoy.config.core.v3.RequestMethod
_METHODS: dict[int, str] = {
    v.number: ("" if v.name == "METHOD_UNSPECIFIED" else v.name) for v in _METHOD_ENUM.values
}


def response_flags(flags: accesslog_pb2.ResponseFlags) -> str:
    """Envoy's short codes of the flags set, comma-separated ("" when none)."""
    listed = flags.ListFields()
    if not listed:
        return ""
    return ",".join(RESPONSE_FLAG_CODES.get(field.name, field.name) for field, _ in listed)


def decision_id_of(common: accesslog_pb2.AccessLogCommon) -> str:
    """The decision id the ext_authz answer left in the entry ("" if none): the custom
    tag the generated config asks Envoy for (one string lookup), else the metadata."""
    tagged = common.custom_tags.get(DECISION_ID_TAG)
    if tagged:
        return str(tagged)
    if not common.HasField("metadata"):
        return ""
    namespace = common.metadata.filter_metadata.get(EXT_AUTHZ_NAMESPACE)
    if namespace is None:
        return ""
    fields = namespace.fields
    for key in DECISION_ID_KEYS:
        value = fields.get(key)
        if value is not None:
            return str(value.string_value)
    return ""


def _path(raw: str) -> str:
    """Without the query; Envoy already normalised it (the generated config's
    ``normalize_path``/``merge_slashes``), so the canonical form is only needed when an
    escape or a dot segment is left."""
    path = raw.partition("?")[0]
    if "%" in path or "/." in path or "//" in path or "\\" in path:
        with contextlib.suppress(InvalidPath):  # kept as Envoy logged it
            path = canonicalize(path)[0]
    return path[:MAX_PATH]


def _make(values: tuple[object, ...]) -> ResponseObservation:
    return tuple.__new__(ResponseObservation, values)  # type: ignore[type-var]


def to_observation(entry: accesslog_pb2.HTTPAccessLogEntry) -> ResponseObservation:
    """The observation of one HTTP access-log entry (pure; never raises on a valid
    message: absent fields read as their "unknown" values).

    A duration Envoy did not set reads as zero, and no timing Envoy records is exactly
    zero nanoseconds: so "unset" is tested as zero (cheaper than ``HasField``)."""
    common = entry.common_properties
    start = common.start_time
    when = start.seconds + start.nanos * 1e-9 or time.time()
    d = common.time_to_last_downstream_tx_byte
    duration_ms = d.seconds * 1e3 + d.nanos * 1e-6 or -1.0
    # The upstream's share: from the first byte sent to it to the last byte back (to
    # the first byte back when the body never finished).
    upstream_ms = -1.0
    d = common.time_to_first_upstream_tx_byte
    sent = d.seconds * 1e3 + d.nanos * 1e-6
    reached = sent > 0
    if reached:
        d = common.time_to_last_upstream_rx_byte
        back = d.seconds * 1e3 + d.nanos * 1e-6
        if not back:
            d = common.time_to_first_upstream_rx_byte
            back = d.seconds * 1e3 + d.nanos * 1e-6
        if back:
            upstream_ms = max(back - sent, 0.0)
    request = entry.request
    response = entry.response
    raw_path = request.path
    return _make(
        (
            when,
            decision_id_of(common),
            common.route_name,
            _METHODS.get(request.request_method, ""),
            _path(raw_path) if raw_path else "",
            common.downstream_remote_address.socket_address.address,
            response.response_code.value,
            response.response_body_bytes,
            duration_ms,
            upstream_ms,
            response_flags(common.response_flags) if common.HasField("response_flags") else "",
            reached,
            request.forwarded_for,
        )
    )


def build_http_entry(
    *,
    path: str,
    method: str = "GET",
    status: int = 200,
    route: str = "",
    decision_id: str = "",
    metadata_key: str = DECISION_ID_KEYS[0],
    client_address: str = "127.0.0.1",
    bytes_sent: int = 0,
    start: float = 0.0,
    duration_ms: float = 1.0,
    upstream_ms: float | None = 0.5,
    flags: tuple[str, ...] = (),
    tagged: bool = True,
) -> accesslog_pb2.HTTPAccessLogEntry:
    """An HTTP access-log entry shaped like the ones Envoy sends (tests, benchmarks).

    ``upstream_ms`` None: the request never reached an upstream (no upstream timings).
    ``flags``: :data:`RESPONSE_FLAG_CODES` field names set to true. ``tagged``: the
    decision id also in the custom tag the generated config asks for (metadata only
    otherwise, as from a config of one's own)."""
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.protocol_version = accesslog_pb2.HTTPAccessLogEntry.HTTP11
    common = entry.common_properties
    common.downstream_remote_address.socket_address.address = client_address
    common.downstream_remote_address.socket_address.port_value = 40000
    if start:
        common.start_time.FromNanoseconds(int(start * 1e9))
    common.time_to_last_downstream_tx_byte.FromNanoseconds(int(duration_ms * 1e6))
    common.route_name = route
    if upstream_ms is not None:
        sent = min(duration_ms / 4, 0.2)
        common.time_to_first_upstream_tx_byte.FromNanoseconds(int(sent * 1e6))
        common.time_to_first_upstream_rx_byte.FromNanoseconds(int((sent + upstream_ms) * 1e6))
        common.time_to_last_upstream_rx_byte.FromNanoseconds(int((sent + upstream_ms) * 1e6))
        common.upstream_remote_address.socket_address.address = "127.0.0.1"
        common.upstream_cluster = "upstream"
    for name in flags:
        if name == "unauthorized_details":
            common.response_flags.unauthorized_details.reason = (
                accesslog_pb2.ResponseFlags.Unauthorized.EXTERNAL_SERVICE
            )
        else:
            setattr(common.response_flags, name, True)
    if decision_id:
        fields = common.metadata.filter_metadata[EXT_AUTHZ_NAMESPACE].fields
        fields[metadata_key].string_value = decision_id
        if tagged:
            common.custom_tags[DECISION_ID_TAG] = decision_id
    request = entry.request
    request.request_method = _METHOD_ENUM.values_by_name[method].number  # type: ignore[assignment]
    request.scheme = "http"
    request.authority = "api.local"
    request.path = path
    request.request_id = "req-" + (decision_id or "public")
    response = entry.response
    response.response_code.value = status
    response.response_body_bytes = bytes_sent
    return entry
