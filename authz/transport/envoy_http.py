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
  :mod:`authz.envoyconf`).
- Headers matched by ``dynamic_metadata_from_headers`` become the filter's dynamic
  metadata (``x-authz-meta-*``: decision id, subject, reason, policy version) for
  the access log, on allow and deny alike.

The peer identity is not part of that protocol: the generated config has Envoy add
it with ``authorization_request.headers_to_add`` (``x-authz-peer-principal:
%DOWNSTREAM_PEER_URI_SAN%``, ``x-authz-peer-certificate: %DOWNSTREAM_PEER_CERT%``,
``x-authz-source-address``), always overwriting, and
never forwards a client-sent copy (``disallowed_headers``). Only this transport
reads those headers; the gRPC transport takes the identity from the attributes.

Those headers are believed only from Envoy, so the transport must know a request
comes from Envoy. Until TLS runs between Envoy and the service, that is a shared
secret: with ``authz serve --http-secret-file F`` every check must carry
``x-authz-transport-secret`` with the file's value (compared in constant time), and
``authz envoy-config --http-secret-file F`` has Envoy add it (``headers_to_add``,
overwriting any client-sent copy, which is also disallowed). Without a secret the
transport binds loopback only, unless the operator says the network is trusted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

from authz.model import Decision, Request

#: Envoy sets these (headers_to_add) on every check request; a client cannot.
PEER_PRINCIPAL_HEADER = "x-authz-peer-principal"
SOURCE_ADDRESS_HEADER = "x-authz-source-address"
#: The URL-encoded PEM of the client certificate Envoy verified (%DOWNSTREAM_PEER_CERT%),
#: as the gRPC transport's ``attributes.source.certificate``.
PEER_CERTIFICATE_HEADER = "x-authz-peer-certificate"
#: Proves a check comes from the Envoy whose config was generated with the secret.
SECRET_HEADER = "x-authz-transport-secret"
TRUSTED_HEADERS = (
    PEER_PRINCIPAL_HEADER,
    SOURCE_ADDRESS_HEADER,
    SECRET_HEADER,
    PEER_CERTIFICATE_HEADER,
)
#: At least 128 bits as hex; characters that are safe in a header value and mean
#: nothing to Envoy's substitution formatter (``%``) or YAML.
MIN_SECRET_LENGTH = 32
_SECRET_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")

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
    certificate = headers.pop(PEER_CERTIFICATE_HEADER, "")
    headers.pop(SECRET_HEADER, None)  # the transport checked it; no stage may see it
    return Request(
        method=method,
        path=target[len(prefix) :] or "/",
        host=headers.get("host", ""),
        headers=headers,
        body=body,
        principal=principal,
        peer_certificate=certificate,
        source_address=source,
        request_id=headers.get("x-request-id", ""),
        scheme=headers.get("x-forwarded-proto", "http"),
    )


def read_secret_file(path: str) -> str:
    """The transport secret in ``path`` (one trailing newline stripped).

    Raises ValueError saying what is wrong: unreadable, empty, shorter than
    :data:`MIN_SECRET_LENGTH` characters, or holding a character other than
    letters, digits and ``-._~+/=`` (what ``openssl rand -hex 32`` or ``-base64 32``
    print). The message never contains the secret.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = "\x00"  # reported as a bad character below
    if not text:
        raise ValueError(f"{path}: the secret is empty")
    if any(c not in _SECRET_CHARS for c in text):
        raise ValueError(
            f"{path}: the secret may hold only letters, digits and -._~+/= "
            "(e.g. the output of `openssl rand -hex 32`), on one line"
        )
    if len(text) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"{path}: the secret has {len(text)} characters; at least {MIN_SECRET_LENGTH} "
            "are needed (e.g. `openssl rand -hex 32`)"
        )
    return text


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes a port to this machine only (``localhost``,
    127.0.0.0/8, ::1). Any other name or address counts as reachable from outside."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
