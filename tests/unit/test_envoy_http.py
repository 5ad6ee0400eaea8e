"""The HTTP ext_authz adapter: Envoy's http_service request -> Request, Decision -> response.

The differential test runs every golden case through both transports and checks
that Envoy ends up doing the same thing: same upstream headers set and removed,
same client status, headers and body, same dynamic metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz.envoyconf import http_check_headers
from authz.identity.mtls import spiffe_id_from_certificate
from authz.model import ANONYMOUS, Decision, Identity
from authz.transport import envoy_http
from authz.transport.envoy_http import (
    CHECK_PREFIX,
    HEADERS_TO_REMOVE,
    PEER_PRINCIPAL_HEADER,
    SOURCE_ADDRESS_HEADER,
    STATUS_HEADER,
    to_request,
    to_response,
)
from authz.transport.http_wire import render
from tests.unit.test_engine_golden import CASES, ID_HEADERS, make_engine, run


def test_to_request_reads_what_envoy_sends_and_takes_out_the_trusted_headers() -> None:
    headers = {
        "host": "api.local",
        "authorization": "Bearer t",
        "x-request-id": "r-1",
        "x-forwarded-proto": "https",
        PEER_PRINCIPAL_HEADER: "spiffe://td/ns/a/sa/b",
        SOURCE_ADDRESS_HEADER: "10.1.2.3",
    }
    req = to_request("POST", "/check/v1/orders?x=1", headers, b"{}")
    assert req.method == "POST"
    assert req.path == "/v1/orders?x=1"
    assert req.host == "api.local"
    assert req.body == b"{}"
    assert req.principal == "spiffe://td/ns/a/sa/b"
    assert req.source_address == "10.1.2.3"
    assert req.request_id == "r-1"
    assert req.scheme == "https"
    # stages never see the trusted headers as request headers
    assert PEER_PRINCIPAL_HEADER not in req.headers
    assert SOURCE_ADDRESS_HEADER not in req.headers
    assert req.headers["authorization"] == "Bearer t"


def test_to_request_without_peer() -> None:
    req = to_request("GET", CHECK_PREFIX, {}, b"")
    assert req.path == "/"
    assert req.principal == ""
    assert req.host == ""


def _decision(**kw: Any) -> Decision:
    base: dict[str, Any] = {
        "allowed": True,
        "status": 200,
        "reason": "allowed",
        "decision_id": "d-1",
        "metadata": {"decision_id": "d-1", "subject": "alice", "reason": "allowed"},
    }
    return Decision(**{**base, **kw})


def test_allow_response() -> None:
    status, headers, body = to_response(
        _decision(
            identity=Identity(kind="jwt", subject="alice"),
            upstream_headers=(("x-authz-subject", "alice"),),
            remove_upstream_headers=("x-authz-scopes", "authorization"),
            response_headers=(("x-ratelimit-remaining", "9"),),
        )
    )
    assert status == 200
    assert body == b""
    got = dict(headers)
    assert got["x-authz-subject"] == "alice"
    assert got[HEADERS_TO_REMOVE] == "x-authz-scopes,authorization"
    assert got["x-ratelimit-remaining"] == "9"
    assert got["x-authz-meta-decision-id"] == "d-1"
    assert got["x-authz-meta-reason"] == "allowed"


def test_deny_response_keeps_status_headers_and_body() -> None:
    status, headers, body = to_response(
        _decision(
            allowed=False,
            status=401,
            reason="missing_credential",
            identity=ANONYMOUS,
            response_headers=(("www-authenticate", 'Bearer realm="x"'),),
            body='{"error": "missing_credential"}',
            metadata={"decision_id": "d-1", "subject": "", "reason": "missing_credential"},
        )
    )
    assert status == 401
    assert json.loads(body) == {"error": "missing_credential"}
    got = dict(headers)
    assert got["www-authenticate"] == 'Bearer realm="x"'
    assert "x-authz-meta-subject" not in got  # empty values are left out
    assert STATUS_HEADER not in got


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_deny_travels_as_403_with_its_status(status: int) -> None:
    # Envoy treats a 5xx from the service as a failed call; the generated config
    # maps x-authz-meta-status back to the real status.
    got_status, headers, _ = to_response(_decision(allowed=False, status=status, reason="x"))
    assert got_status == 403
    assert dict(headers)[STATUS_HEADER] == str(status)
    assert status in envoy_http.RESTORED_STATUSES


def test_render_cannot_be_split_by_a_header_value() -> None:
    raw = render(403, [("x-a", "v\r\nset-cookie: evil"), ("x-b", "ok\n")], b"{}", close=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 403 Forbidden"
    assert b"x-a: v%0D%0Aset-cookie: evil" in lines
    assert b"x-b: ok%0A" in lines
    assert b"connection: close" in lines
    assert b"content-length: 2" in lines
    assert body == b"{}"
    assert not any(line.lower().startswith(b"set-cookie") for line in lines)


# ----------------------------------------------------------------------------- differential


def _client_header(name: str) -> bool:
    return name in envoy_http.CLIENT_HEADERS or name.startswith(envoy_http.CLIENT_HEADER_PREFIXES)


def _envoy_view_of_http(status: int, headers: list[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """What Envoy does with an HTTP authz answer, under the generated config."""
    meta = {
        k[len(envoy_http.METADATA_PREFIX) :].replace("-", "_"): v
        for k, v in headers
        if k.startswith(envoy_http.METADATA_PREFIX) and k != STATUS_HEADER
    }
    if status == 200:
        removed = [h for k, v in headers if k == HEADERS_TO_REMOVE for h in v.split(",")]
        return {
            "allowed": True,
            "upstream": {k: v for k, v in headers if k in ID_HEADERS},
            "removed": sorted(removed),
            "client": {k: v for k, v in headers if _client_header(k)},
            "metadata": meta,
        }
    restored = dict(headers).get(STATUS_HEADER)
    return {
        "allowed": False,
        "status": int(restored) if restored else status,
        "client": {k: v for k, v in headers if _client_header(k)},
        "body": json.loads(body),
        "metadata": meta,
    }


def _envoy_view_of_grpc(response: Any) -> dict[str, Any]:
    meta = {k: v for k, v in dict(response.dynamic_metadata).items() if v}
    if response.HasField("ok_response"):
        ok = response.ok_response
        return {
            "allowed": True,
            "upstream": {h.header.key: h.header.value for h in ok.headers},
            "removed": sorted(ok.headers_to_remove),
            "client": {h.header.key: h.header.value for h in ok.response_headers_to_add},
            "metadata": meta,
        }
    denied = response.denied_response
    return {
        "allowed": False,
        "status": denied.status.code,
        "client": {h.header.key: h.header.value for h in denied.headers},
        "body": json.loads(denied.body),
        "metadata": meta,
    }


def _as_envoy_http_request(
    request: dict[str, Any], sent: list[str]
) -> tuple[str, str, dict[str, str], bytes]:
    """The HTTP request Envoy's http_service sends for this CheckRequest's request,
    under the generated config: only the ``sent`` headers (and those Envoy always
    sends) are forwarded."""
    always = {"authorization", "content-length"}
    headers = {
        k.lower(): v
        for k, v in request.get("headers", {}).items()
        if k.lower() in sent or k.lower() in always
    }
    headers["host"] = request.get("host", "shop.example")
    headers.setdefault("x-request-id", "req-1")
    principal = request.get("principal", "")
    if not principal and request.get("certificate"):
        # Envoy's %DOWNSTREAM_PEER_URI_SAN% of the verified certificate
        principal = spiffe_id_from_certificate(request["certificate"]) or ""
    if principal:
        headers[PEER_PRINCIPAL_HEADER] = principal
    headers[SOURCE_ADDRESS_HEADER] = "127.0.0.1"
    body = request.get("body", b"")
    return request.get("method", "GET"), CHECK_PREFIX + request["path"], headers, body


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_both_transports_make_envoy_do_the_same(tmp_path: Path, case: dict[str, Any]) -> None:
    (tmp_path / "grpc").mkdir()
    (tmp_path / "http").mkdir()
    grpc_engine, _ = make_engine(tmp_path / "grpc")
    via_grpc = _envoy_view_of_grpc(await run(grpc_engine, case["request"]))
    http_engine, _ = make_engine(tmp_path / "http")
    sent = http_check_headers(http_engine.policy.config)
    method, target, headers, body = _as_envoy_http_request(case["request"], sent)
    decision = await http_engine.check(to_request(method, target, headers, body))
    via_http = _envoy_view_of_http(*to_response(decision))
    assert via_http == via_grpc
