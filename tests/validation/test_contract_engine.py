"""Contracts through the engine: CheckRequest -> PolicyEngine -> CheckResponse.

One table of requests against one policy with a hand-written contract and an
OpenAPI document: the status, reason, ``in`` and ``location`` of each deny, and
that the deny body never echoes what the client sent.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from authz.audit.sink import MemorySink
from authz.engine import CompiledPolicy, PolicyEngine
from authz.inventory import shared_inventory
from authz.policy.loader import load_policy
from authz.transport.envoy_grpc import build_check_request, to_check_response, to_request

SECRET = "S3cr3t-Value-7f"

POLICY = """\
version: 1
validation:
  max_depth: 8
  max_members: 200
openapi:
  - file: openapi.yaml
routes:
  - name: create-order
    path: /v1/orders
    methods: [POST]
    public: true
    contract:
      content_types: [application/json, application/x-www-form-urlencoded]
      max_body_bytes: 8192
      body:
        type: object
        additionalProperties: false
        required: [items]
        properties:
          items:
            type: array
            maxItems: 20
            items:
              type: object
              additionalProperties: false
              required: [sku, qty]
              properties:
                sku: {type: string, pattern: "^(a+)+$"}
                qty: {type: integer, minimum: 1, maximum: 100}
          note: {type: string, maxLength: 50}
          count: {type: integer}
          tags: {type: array, items: {type: string}}
      parameters:
        - {name: dry_run, in: query, schema: {type: boolean}}
        - {name: x-priority, in: header, schema: {enum: [low, high]}}
  - name: list-orders
    path: /v1/orders
    methods: [GET]
    public: true
    contract:
      unknown_query_parameters: deny
      parameters:
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
        - {name: status, in: query, required: true, schema: {enum: [open, shipped]}}
        - {name: tag, in: query, schema: {type: array, maxItems: 3, items: {type: string}}}
  - name: get-order
    path: /v1/orders/{id}
    methods: [GET]
    public: true
    contract:
      parameters: [{name: id, in: path, schema: {type: integer, minimum: 1}}]
  - name: beta
    path: /v1/beta
    methods: [POST]
    public: true
    mode: monitor
    contract:
      body: {type: object, properties: {a: {type: integer}, nested: {type: object, properties: {b: {type: string}}}}}
      parameters: [{name: known, in: query}]
"""

OPENAPI = """\
openapi: 3.0.3
info: {title: t, version: "1"}
security: []                      # public
paths:
  /v2/items/{item-id}:
    parameters:
      - {name: item-id, in: path, required: true, schema: {type: integer}}
    put:
      operationId: put-item
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Item"}
      responses: {"200": {description: ok}}
components:
  schemas:
    Item:
      type: object
      required: [name]
      properties:
        name: {type: string, minLength: 1}
        price: {type: number, minimum: 0, exclusiveMinimum: true, nullable: true}
"""

JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
OK_BODY = b'{"items": [{"sku": "aaa", "qty": 2}]}'


def order(
    body: bytes, headers: dict[str, str] | None = None, path: str = "/v1/orders"
) -> dict[str, Any]:
    return dict(method="POST", path=path, headers={**JSON, **(headers or {})}, body=body)


# (name, request, status, reason, in, location); status 200 = allowed
CASES: list[tuple[str, dict[str, Any], int, str, str, str]] = [
    ("valid body", order(OK_BODY), 200, "allowed", "", ""),
    ("form body: fields typed by the schema", dict(method="POST", path="/v1/orders", headers=FORM, body=b"count=3&tags=a&tags=b&items=x"), 400, "body_invalid", "body", "/items/0"),
    ("form with a typed field", dict(method="POST", path="/v1/orders", headers=FORM, body=b"count=x"), 400, "body_invalid", "body", "/count"),
    ("form field twice", dict(method="POST", path="/v1/orders", headers=FORM, body=b"count=1&count=2"), 400, "body_duplicate_key", "body", "/count"),
    ("form invalid escape", dict(method="POST", path="/v1/orders", headers=FORM, body=b"count=%zz"), 400, "body_malformed", "body", ""),
    ("json with charset", order(OK_BODY, {"content-type": "application/json; charset=utf-8"}), 200, "allowed", "", ""),
    ("schema violation deep", order(b'{"items": [{"sku": "aaa", "qty": 2}, {"sku": "aa", "qty": 0}]}'), 400, "body_invalid", "body", "/items/1/qty"),
    ("missing required member", order(b'{"items": [{"sku": "aaa"}]}'), 400, "body_invalid", "body", "/items/0/qty"),
    ("unknown field (mass assignment)", order(b'{"items": [], "is_admin": true}'), 400, "body_unknown_field", "body", "/is_admin"),
    ("unknown nested field", order(b'{"items": [{"sku": "a", "qty": 1, "price": 0}]}'), 400, "body_unknown_field", "body", "/items/0/price"),
    ("wrong type", order(b'{"items": "' + SECRET.encode() + b'"}'), 400, "body_invalid", "body", "/items"),
    ("hostile input to (a+)+$ is bounded", order(b'{"items": [{"sku": "' + b"a" * 3000 + b'!", "qty": 1}]}'), 400, "body_invalid", "body", "/items/0/sku"),
    ("duplicate key", order(b'{"items": [], "note": "a", "note": "b"}'), 400, "body_duplicate_key", "body", "/note"),
    ("duplicate nested key", order(b'{"items": [{"sku": "a", "qty": 1, "qty": 1}]}'), 400, "body_duplicate_key", "body", "/items/0/qty"),
    ("trailing data", order(OK_BODY + b" {}"), 400, "body_malformed", "body", ""),
    ("two documents", order(b"{}{}"), 400, "body_malformed", "body", ""),
    ("byte order mark", order(b"\xef\xbb\xbf" + OK_BODY), 400, "body_malformed", "body", ""),
    ("invalid UTF-8", order(b'{"items": [], "note": "\xc3\x28"}'), 400, "body_malformed", "body", ""),
    ("UTF-8 encoded surrogate", order(b'{"items": [], "note": "\xed\xa0\x80"}'), 400, "body_malformed", "body", ""),
    ("lone surrogate escape", order(b'{"items": [], "note": "\\ud800"}'), 400, "body_malformed", "body", ""),
    ("lone surrogate in a key", order(b'{"items": [], "\\udc00": 1}'), 400, "body_malformed", "body", ""),
    ("surrogate pair is fine", order(b'{"items": [], "note": "\\ud83d\\ude00"}'), 200, "allowed", "", ""),
    ("NaN", order(b'{"items": [], "count": NaN}'), 400, "body_malformed", "body", ""),
    ("Infinity", order(b'{"items": [], "count": -Infinity}'), 400, "body_malformed", "body", ""),
    ("overflowing number", order(b'{"items": [], "count": 1e400}'), 400, "body_malformed", "body", ""),
    ("huge integer", order(b'{"items": [], "count": ' + b"9" * 5000 + b"}"), 400, "body_malformed", "body", ""),
    ("single quotes", order(b"{'items': []}"), 400, "body_malformed", "body", ""),
    ("not JSON", order(b"items=1"), 400, "body_malformed", "body", ""),
    ("too deep", order(b'{"items": [], "tags": ' + b"[" * 9 + b"]" * 9 + b"}"), 400, "body_limit_exceeded", "body", ""),
    ("brackets in strings with escaped quotes do not count", order(b'{"items": [], "note": "\\"[[[[[[[[[[[[[\\\\"}'), 200, "allowed", "", ""),
    ("escaped quotes do not hide depth", order(b'{"items": [], "note": "\\"", "tags": ' + b"[" * 9 + b"]" * 9 + b"}"), 400, "body_limit_exceeded", "body", ""),
    ("brackets in strings do not count", order(b'{"items": [], "note": "[[[[[[[[[[[[[[[[[["}'), 200, "allowed", "", ""),
    ("too many members", order(b'{"items": [], "tags": [' + b",".join([b'"x"'] * 250) + b"]}"), 400, "body_limit_exceeded", "body", ""),
    ("empty body, body required", order(b""), 400, "body_missing", "body", ""),
    ("media type not allowed", order(OK_BODY, {"content-type": "text/plain"}), 415, "unsupported_media_type", "header", "/content-type"),
    ("no media type", dict(method="POST", path="/v1/orders", headers={}, body=OK_BODY), 415, "unsupported_media_type", "header", "/content-type"),
    ("charset not UTF-8", order(OK_BODY, {"content-type": "application/json; charset=latin-1"}), 415, "unsupported_media_type", "header", "/content-type"),
    ("oversize body", order(b'{"items": [], "note": "' + b"x" * 9000 + b'"}'), 413, "body_too_large", "body", ""),
    ("oversize by content-length", order(OK_BODY, {"content-length": "999999"}), 413, "body_too_large", "body", ""),
    ("partial body from Envoy", order(OK_BODY, {"x-envoy-auth-partial-body": "true"}), 413, "body_partial", "body", ""),
    ("typed query parameter", order(OK_BODY, path="/v1/orders?dry_run=true"), 200, "allowed", "", ""),
    ("query parameter of the wrong type", order(OK_BODY, path="/v1/orders?dry_run=" + SECRET), 400, "parameter_invalid", "query", "/dry_run"),
    ("header parameter", order(OK_BODY, {"x-priority": SECRET}), 400, "parameter_invalid", "header", "/x-priority"),
    ("scalar query parameter twice", dict(method="GET", path="/v1/orders?status=open&status=shipped"), 400, "parameter_duplicate", "query", "/status"),
    ("array query parameter repeated", dict(method="GET", path="/v1/orders?status=open&tag=a&tag=b"), 200, "allowed", "", ""),
    ("array query parameter too long", dict(method="GET", path="/v1/orders?status=open&tag=a&tag=b&tag=c&tag=d"), 400, "parameter_invalid", "query", "/tag"),
    ("required query parameter missing", dict(method="GET", path="/v1/orders?limit=5"), 400, "parameter_missing", "query", "/status"),
    ("integer out of range", dict(method="GET", path="/v1/orders?status=open&limit=101"), 400, "parameter_invalid", "query", "/limit"),
    ("integer with a fraction", dict(method="GET", path="/v1/orders?status=open&limit=1.5"), 400, "parameter_invalid", "query", "/limit"),
    ("enum", dict(method="GET", path="/v1/orders?status=deleted"), 400, "parameter_invalid", "query", "/status"),
    ("unknown query parameter denied", dict(method="GET", path="/v1/orders?status=open&debug=1"), 400, "parameter_unknown", "query", "/debug"),
    ("percent-encoded name", dict(method="GET", path="/v1/orders?st%61tus=open"), 200, "allowed", "", ""),
    ("invalid escape in the query", dict(method="GET", path="/v1/orders?status=%E0%A4"), 400, "query_malformed", "query", ""),
    ("typed path parameter", dict(method="GET", path="/v1/orders/42"), 200, "allowed", "", ""),
    ("path parameter of the wrong type", dict(method="GET", path="/v1/orders/abc"), 400, "parameter_invalid", "path", "/id"),
    ("path parameter below minimum", dict(method="GET", path="/v1/orders/0"), 400, "parameter_invalid", "path", "/id"),
    ("openapi body", dict(method="PUT", path="/v2/items/7", headers=JSON, body=b'{"name": "x", "price": null}'), 200, "allowed", "", ""),
    ("openapi 3.0 exclusiveMinimum", dict(method="PUT", path="/v2/items/7", headers=JSON, body=b'{"name": "x", "price": 0}'), 400, "body_invalid", "body", "/price"),
    ("openapi path parameter", dict(method="PUT", path="/v2/items/x", headers=JSON, body=b'{"name": "x"}'), 400, "parameter_invalid", "path", "/item_id"),
    ("openapi required body", dict(method="PUT", path="/v2/items/7", headers=JSON), 400, "body_missing", "body", ""),
    ("monitor route lets a violation through", dict(method="POST", path="/v1/beta?extra=1", headers=JSON, body=b'{"a": "x", "zzz": 1}'), 400, "body_invalid", "body", "/a"),
]  # fmt: skip


def make_engine(tmp_path: Path) -> tuple[PolicyEngine, MemorySink]:
    (tmp_path / "openapi.yaml").write_text(OPENAPI)
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    sink = MemorySink()
    return PolicyEngine(CompiledPolicy(load_policy(path)), sink=sink), sink


async def run(engine: PolicyEngine, request: dict[str, Any]) -> Any:
    kw = {"host": "shop.example", "headers": {}, "request_id": "req-1", **request}
    check = build_check_request(**kw)
    check = type(check).FromString(check.SerializeToString())
    response = to_check_response(await engine.check(to_request(check)))
    return type(response).FromString(response.SerializeToString())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_contract(
    tmp_path: Path, case: tuple[str, dict[str, Any], int, str, str, str]
) -> None:
    _, request, status, reason, part, location = case
    engine, sink = make_engine(tmp_path)
    response = await run(engine, request)
    assert sink.records[-1]["reason"] == reason
    assert sink.records[-1]["status"] == status
    if status == 200 or request["path"].startswith("/v1/beta"):
        assert response.HasField("ok_response"), response
        return
    denied = response.denied_response
    assert denied.status.code == status
    body = json.loads(denied.body)
    assert body == {"error": reason, "request_id": "req-1", "in": part, "location": location}
    assert SECRET not in denied.body
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers["content-type"] == "application/json"


def test_case_names_unique() -> None:
    assert len({c[0] for c in CASES}) == len(CASES)


async def test_monitor_mode_records_drift(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path)
    await run(engine, dict(method="POST", path="/v1/beta?extra=1&known=2", headers=JSON,
                           body=b'{"a": 1, "zzz": 1, "nested": {"b": "x", "c": [1]}}'))  # fmt: skip
    await run(engine, dict(method="POST", path="/v1/beta", headers=JSON, body=b'[{"q": 1}]'))
    view = shared_inventory(engine.policy.shared).view()
    (beta,) = [e for e in view.endpoints if e.route == "beta"]
    assert beta.count == 2
    assert beta.drift_query_parameters == ("extra",)
    assert beta.drift_body_fields == ("/zzz", "/nested/c")
    # an enforced route records no drift (its violations are denied instead)
    await run(engine, order(b'{"items": [], "zzz": 1}', path="/v1/orders?zzz=1"))
    view = shared_inventory(engine.policy.shared).view()
    (create,) = [e for e in view.endpoints if e.route == "create-order"]
    assert create.drift_body_fields == () and create.drift_query_parameters == ()


async def test_routes_without_contract_are_untouched(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "routes:\n  - {name: r, path: /x, methods: [POST], public: true}\n"
    )
    engine = PolicyEngine(CompiledPolicy(load_policy(tmp_path / "p.yaml")))
    response = await run(engine, dict(method="POST", path="/x?a=1&a=2", body=b"\xff not json"))
    assert response.HasField("ok_response")
    assert not engine.policy.plans["r"].stages
