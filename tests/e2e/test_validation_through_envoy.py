"""End to end: contract enforcement through a real Envoy.

Envoy sends the body only on routes whose contract validates it (raw bytes, at most
``max_body_bytes``, never a partial body); the service answers 400/413/415 with the
reason and the location, and lets valid requests through to the upstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.demo.stack import LocalStack
from authz.demo.stack import http as send

pytestmark = pytest.mark.e2e

POLICY = """\
mode: enforce
undeclared_routes: deny
openapi:
  - file: openapi.yaml
    unknown_query_parameters: deny
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
  - name: upload
    path: /v1/upload
    methods: [POST]
    public: true
  - name: create-order
    path: /v1/orders
    methods: [POST]
    public: true
    contract:
      content_types: [application/json]
      max_body_bytes: 65536
      body:
        type: object
        additionalProperties: false
        required: [items]
        properties:
          items:
            type: array
            items:
              type: object
              additionalProperties: false
              required: [sku, qty]
              properties:
                sku: {type: string, pattern: "^[A-Z]{3}-[0-9]{4}$"}
                qty: {type: integer, minimum: 1, maximum: 100}
          note: {type: string}
"""

OPENAPI = """\
openapi: 3.1.0
info: {title: search, version: "1"}
security: []
paths:
  /v1/search:
    get:
      operationId: search
      parameters:
        - {name: q, in: query, required: true, schema: {type: string, maxLength: 50}}
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
      responses: {"200": {description: ok}}
"""

JSON = {"content-type": "application/json"}
VALID = {"items": [{"sku": "ABC-1234", "qty": 2}]}


@pytest.fixture(scope="module", params=["grpc", "http"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """The stack once per transport Envoy can use to call the service."""
    tmp: Path = tmp_path_factory.mktemp(f"e2e-validation-{request.param}")
    (tmp / "openapi.yaml").write_text(OPENAPI)
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    with LocalStack(policy=policy, state_dir=tmp / "state", transport=request.param) as running:
        yield running


def call(
    stack: LocalStack, method: str, path: str, headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    return send(method, stack.base_url + path, headers, body)


def deny_body(raw: bytes) -> dict[str, str]:
    payload: dict[str, str] = json.loads(raw)
    assert payload["request_id"]
    return payload


def test_valid_body_reaches_the_upstream_whole(stack: LocalStack) -> None:
    body = json.dumps(VALID).encode()
    status, _, raw = call(stack, "POST", "/v1/orders", JSON, body)
    assert status == 200, raw
    echoed = json.loads(raw)
    assert echoed["path"] == "/v1/orders"
    assert echoed["headers"]["x-authz-decision-id"]


def test_body_larger_than_the_listener_buffer_but_within_the_contract(stack: LocalStack) -> None:
    body = json.dumps({**VALID, "note": "x" * 48_000}).encode()
    status, _, raw = call(stack, "POST", "/v1/orders", JSON, body)
    assert status == 200, raw


@pytest.mark.parametrize(
    "body,reason,location",
    [
        (b'{"items": [{"sku": "ABC-1234", "qty": 0}]}', "body_invalid", "/items/0/qty"),
        (
            b'{"items": [{"sku": "ABC-1234", "qty": 1}], "is_admin": true}',
            "body_unknown_field",
            "/is_admin",
        ),
        (b'{"items": [], "note": "a", "note": "b"}', "body_duplicate_key", "/note"),
        (b'{"items": [], "note": "\xff\xfe"}', "body_malformed", ""),
        (b'{"items": []} trailing', "body_malformed", ""),
        (b'{"items": [], "note": NaN}', "body_malformed", ""),
    ],
    ids=["schema", "unknown field", "duplicate key", "invalid UTF-8", "trailing data", "NaN"],
)
def test_400_body(stack: LocalStack, body: bytes, reason: str, location: str) -> None:
    status, headers, raw = call(stack, "POST", "/v1/orders", JSON, body)
    assert status == 400, raw
    assert headers["content-type"] == "application/json"
    payload = deny_body(raw)
    assert (payload["error"], payload["in"], payload["location"]) == (reason, "body", location)


@pytest.mark.parametrize(
    "path,reason,location",
    [
        ("/v1/search?q=shoes&limit=500", "parameter_invalid", "/limit"),
        ("/v1/search?q=shoes&limit=ten", "parameter_invalid", "/limit"),
        ("/v1/search?limit=5", "parameter_missing", "/q"),
        ("/v1/search?q=a&q=b", "parameter_duplicate", "/q"),
        ("/v1/search?q=a&admin=1", "parameter_unknown", "/admin"),
    ],
)
def test_400_parameter(stack: LocalStack, path: str, reason: str, location: str) -> None:
    status, _, raw = call(stack, "GET", path)
    assert status == 400, raw
    payload = deny_body(raw)
    assert (payload["error"], payload["in"], payload["location"]) == (reason, "query", location)


def test_parameters_within_the_contract_pass(stack: LocalStack) -> None:
    status, _, raw = call(stack, "GET", "/v1/search?q=red%20shoes&limit=20")
    assert status == 200, raw


def test_413_body_over_the_contract_limit(stack: LocalStack) -> None:
    # Envoy buffers at most max_body_bytes for this route and refuses the rest itself
    # (allow_partial_message: false): the service never sees a truncated body.
    body = json.dumps({**VALID, "note": "x" * 70_000}).encode()
    status, _, _ = call(stack, "POST", "/v1/orders", JSON, body)
    assert status == 413


def test_415_media_type(stack: LocalStack) -> None:
    status, _, raw = call(stack, "POST", "/v1/orders", {"content-type": "text/plain"}, b"hi")
    assert status == 415
    payload = deny_body(raw)
    assert (payload["error"], payload["in"], payload["location"]) == (
        "unsupported_media_type", "header", "/content-type"
    )  # fmt: skip


def test_routes_without_a_contract_get_no_body_and_no_buffering(stack: LocalStack) -> None:
    # Far above any buffer: streamed to the upstream, never held for ext_authz.
    status, _, raw = call(
        stack, "POST", "/v1/upload", {"content-type": "application/octet-stream"}, b"\xff" * 300_000
    )
    assert status == 200, raw[:200]
