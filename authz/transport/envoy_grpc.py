"""Envoy ext_authz v3 messages <-> the core's Request and Decision values.

This and the server are the only modules that know about protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from authz.model import Decision, Request

CheckRequest = external_auth_pb2.CheckRequest
CheckResponse = external_auth_pb2.CheckResponse

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK = 0
_PERMISSION_DENIED = 7
_UNAUTHENTICATED = 16
_METADATA_NAMESPACE = "envoy.filters.http.ext_authz"


def to_request(check: external_auth_pb2.CheckRequest) -> Request:
    """Translate a CheckRequest; trusts only what Envoy itself attests."""
    attrs = check.attributes
    http = attrs.request.http
    # The message's own map (a read-only view for the engine): copying it into a
    # dict cost ~3 µs per call.
    headers: Mapping[str, str] = http.headers if http.headers else _from_header_map(http.header_map)
    path = http.path
    if http.fragment:
        path += "#" + http.fragment  # rejected as invalid_path by canonicalisation
    source = attrs.source
    body = http.raw_body or http.body.encode("utf-8", "surrogateescape")
    return Request(
        method=http.method,
        path=path,
        host=http.host,
        headers=headers,
        body=body,
        principal=source.principal,
        peer_certificate=source.certificate,
        source_address=source.address.socket_address.address,
        request_id=headers.get("x-request-id") or http.id,
        scheme=http.scheme,
    )


def _from_header_map(header_map: base_pb2.HeaderMap) -> dict[str, str]:
    headers: dict[str, str] = {}
    for h in header_map.headers:
        value = h.value or h.raw_value.decode("utf-8", "surrogateescape")
        key = h.key.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers


def _add_headers(target: Any, pairs: tuple[tuple[str, str], ...]) -> None:
    # Filling fields in place is about 3x cheaper with upb than building
    # sub-messages and passing them to constructors.
    add = target.add
    for key, value in pairs:
        option = add(append_action=_OVERWRITE)
        option.header.key = key
        option.header.value = value


def to_check_response(decision: Decision) -> external_auth_pb2.CheckResponse:
    response = external_auth_pb2.CheckResponse()
    fields = response.dynamic_metadata.fields
    for key, value in decision.metadata.items():
        fields[key].string_value = value
    if decision.allowed:
        response.status.code = _OK
        ok = response.ok_response
        _add_headers(ok.headers, decision.upstream_headers)
        if decision.remove_upstream_headers:
            ok.headers_to_remove.extend(decision.remove_upstream_headers)
        if decision.response_headers:
            _add_headers(ok.response_headers_to_add, decision.response_headers)
        return response
    response.status.code = _UNAUTHENTICATED if decision.status == 401 else _PERMISSION_DENIED
    response.status.message = decision.reason
    denied = response.denied_response
    denied.status.code = decision.status  # type: ignore[assignment]
    _add_headers(denied.headers, decision.response_headers)
    denied.body = decision.body
    return response


def build_check_request(
    *,
    method: str,
    path: str,
    host: str,
    headers: dict[str, str],
    body: bytes = b"",
    principal: str = "",
    certificate: str = "",
    source_address: str = "127.0.0.1",
    request_id: str = "",
    scheme: str = "http",
) -> external_auth_pb2.CheckRequest:
    """A CheckRequest shaped like the ones Envoy sends (for the CLI and tests)."""
    ctx = attribute_context_pb2.AttributeContext
    http = ctx.HttpRequest(
        id=request_id,
        method=method,
        headers={k.lower(): v for k, v in headers.items()},
        path=path,
        host=host,
        scheme=scheme,
        protocol="HTTP/1.1",
        size=len(body),
    )
    if body:
        try:
            http.body = body.decode("utf-8")
        except UnicodeDecodeError:
            http.raw_body = body
    if request_id and "x-request-id" not in http.headers:
        http.headers["x-request-id"] = request_id
    source = ctx.Peer(
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=source_address, port_value=50000)
        ),
        principal=principal,
        certificate=certificate,
    )
    return external_auth_pb2.CheckRequest(
        attributes=ctx(source=source, request=ctx.Request(http=http))
    )
