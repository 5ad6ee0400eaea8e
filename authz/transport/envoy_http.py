"""Envoy's HTTP ext_authz protocol <-> the core's Request and Decision values.

In ``http_service`` mode (and Istio's ``envoyExtAuthzHttp``) Envoy sends, for every
request it checks, an HTTP/1.1 request to the service with the original method,
``path_prefix`` + the original path and query, the original ``Host`` and the
request headers the filter allows. The answer is an HTTP response:

- **200**: allow. Response headers that Envoy's ``allowed_upstream_headers`` match
  are set on the request sent upstream (overwriting client-sent copies);
  ``x-envoy-auth-headers-to-remove`` lists headers Envoy removes from it; those
  that ``allowed_client_headers_on_success`` match go to the client's response.
- **anything else below 500**: deny, with that status, the body, and the headers
  ``allowed_client_headers`` match.
- **5xx**: Envoy treats it as a failed call (``status_on_error``), so a deny whose
  status is 5xx (``jwks_unavailable`` 503, ``internal_error`` 500) is sent as 403
  with its real status in the ``x-authz-meta-status`` header; the generated Envoy
  config restores the status with a local-reply mapper (see
  :mod:`authz.envoy_config`).
- Headers matched by ``dynamic_metadata_from_headers`` become the filter's dynamic
  metadata (``x-authz-meta-*``: decision id, subject, reason, policy version) for
  the access log, on allow and deny alike.

The peer identity is not part of that protocol: the generated config has Envoy add
it with ``authorization_request.headers_to_add`` (``x-authz-peer-principal:
%DOWNSTREAM_PEER_URI_SAN%``, ``x-authz-source-address``), always overwriting, and
never forwards a client-sent copy (``disallowed_headers``). Only this transport
reads those headers; the gRPC transport takes the identity from the attributes.
"""

from __future__ import annotations

from collections.abc import Mapping

from authz.model import Decision, Request

#: Envoy sets these (headers_to_add) on every check request; a client cannot.
PEER_PRINCIPAL_HEADER = "x-authz-peer-principal"
SOURCE_ADDRESS_HEADER = "x-authz-source-address"
TRUSTED_HEADERS = (PEER_PRINCIPAL_HEADER, SOURCE_ADDRESS_HEADER)

#: Check requests arrive as CHECK_PREFIX + original path (Envoy's ``path_prefix``);
#: anything else is not a check, so the health path can never be mistaken for one.
CHECK_PREFIX = "/check"
HEALTH_PATH = "/healthz"

HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"
METADATA_PREFIX = "x-authz-meta-"
#: The real status of a 5xx deny, sent as 403 (Envoy treats 5xx as a failed call).
STATUS_HEADER = METADATA_PREFIX + "status"
#: Deny statuses the local-reply mapper of the generated config restores.
RESTORED_STATUSES = (500, 502, 503, 504)
CARRIER_STATUS = 403

#: Headers of a deny (or allow) that Envoy passes to the client: what the engine
#: sets today, plus the rate-limit family stages may add.
CLIENT_HEADERS = ("content-type", "www-authenticate", "allow", "retry-after", "cache-control")
CLIENT_HEADER_PREFIXES = ("x-ratelimit-", "ratelimit")

_METADATA_HEADER = {
    key: METADATA_PREFIX + key.replace("_", "-")
    for key in ("decision_id", "subject", "reason", "policy_version")
}


def metadata_header(key: str) -> str:
    """The response header that carries dynamic metadata ``key`` (``decision_id`` ->
    ``x-authz-meta-decision-id``); Envoy's metadata key is the header name."""
    return _METADATA_HEADER.get(key) or METADATA_PREFIX + key.replace("_", "-")


def to_request(
    method: str, target: str, headers: dict[str, str], body: bytes, *, prefix: str = CHECK_PREFIX
) -> Request:
    """The Request for one check; ``headers`` (lower-case names) is consumed.

    ``target`` must start with ``prefix`` (the caller checks). The trusted headers
    are taken out of ``headers`` so no stage ever sees them as request headers.
    """
    principal = headers.pop(PEER_PRINCIPAL_HEADER, "")
    source = headers.pop(SOURCE_ADDRESS_HEADER, "")
    return Request(
        method=method,
        path=target[len(prefix) :] or "/",
        host=headers.get("host", ""),
        headers=headers,
        body=body,
        principal=principal,
        source_address=source,
        request_id=headers.get("x-request-id", ""),
        scheme=headers.get("x-forwarded-proto", "http"),
    )


Rendered = tuple[int, list[tuple[str, str]], bytes]


def to_response(decision: Decision) -> Rendered:
    """(status, headers, body) of the HTTP answer for ``decision``."""
    headers: list[tuple[str, str]] = [
        (_METADATA_HEADER.get(k) or metadata_header(k), v)
        for k, v in _items(decision.metadata)
        if v
    ]
    if decision.allowed:
        headers.extend(decision.upstream_headers)
        if decision.remove_upstream_headers:
            headers.append((HEADERS_TO_REMOVE, ",".join(decision.remove_upstream_headers)))
        headers.extend(decision.response_headers)
        return 200, headers, b""
    status = decision.status
    if status >= 500 or status == 200:
        headers.append((STATUS_HEADER, str(status)))
        status = CARRIER_STATUS
    headers.extend(decision.response_headers)
    return status, headers, decision.body.encode()


def _items(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    return list(metadata.items())
