"""OpenAPI documents in the policy: operations become routes; unusable documents are
reported with their location in the OpenAPI file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from authz.errors import PolicyError
from authz.policy.loader import load_policy

POLICY = """\
providers:
  corp: {type: jwt, issuer: https://login.example.com, audiences: [api], discovery: true}
  keys:
    type: api_key
    keys: [{id: k, sha256: "%s", owner: o, expires: "2999-01-01"}]
openapi:
  - file: api.yaml
    security_schemes: {oauth: [corp], key: [keys]}
    base_path: /shop
    unknown_query_parameters: deny
    max_body_bytes: 1000
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
""" % ("0" * 64)

DOC = """\
openapi: 3.1.0
info: {title: shop, version: "2"}
security:
  - oauth: [shop:read]
paths:
  /orders:
    get:
      operationId: listOrders
      parameters:
        - {name: limit, in: query, schema: {type: integer}}
        - {name: session, in: cookie, schema: {type: string}}
      responses: {"200": {description: ok}}
    post:
      security:
        - oauth: [shop:write]
        - key: [shop:write]
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Order"}
          application/x-www-form-urlencoded:
            schema: {$ref: "#/components/schemas/Order"}
      responses: {"201": {description: created}}
  /orders/{order-id}/lines/{n}:
    parameters:
      - {name: order-id, in: path, required: true, schema: {type: string, format: uuid}}
      - $ref: "#/components/parameters/N"
    delete:
      security: []
      responses: {"204": {description: gone}}
components:
  parameters:
    N: {name: n, in: path, required: true, schema: {type: integer, minimum: 0}}
  securitySchemes:
    oauth: {type: oauth2, flows: {}}
    key: {type: apiKey, in: header, name: x-api-key}
  schemas:
    Order:
      type: object
      properties:
        lines: {type: array, items: {$ref: "#/components/schemas/Line"}}
    Line:
      type: [object, "null"]
      properties:
        sku: {type: string}
"""


def write(tmp_path: Path, doc: str = DOC, policy: str = POLICY) -> Path:
    (tmp_path / "api.yaml").write_text(textwrap.dedent(doc))
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    return path


def problems(tmp_path: Path, doc: str, policy: str = POLICY) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, doc, policy))
    return info.value.problems


def test_operations_become_routes(tmp_path: Path) -> None:
    config = load_policy(write(tmp_path))
    routes = {r.name: r for r in config.routes}
    assert set(routes) == {
        "health",
        "listOrders",
        "post-shop-orders",
        "delete-shop-orders-order_id-lines-n",
    }
    listing = routes["listOrders"]
    assert (listing.path, listing.methods, listing.providers, listing.scopes) == (
        "/shop/orders",
        ("GET",),
        ("corp",),
        ("shop:read",),
    )
    assert listing.location == f"{tmp_path / 'api.yaml'}:7:5"
    contract = listing.contract
    assert contract is not None
    assert [(p.name, p.where) for p in contract.parameters] == [("limit", "query")]
    assert contract.unknown_query_parameters == "deny"
    assert contract.origin == str(tmp_path / "api.yaml")
    create = routes["post-shop-orders"]
    assert create.providers == ("corp", "keys") and create.scopes == ("shop:write",)
    assert create.contract is not None and create.contract.body is not None
    assert create.contract.body_required and create.contract.max_body_bytes == 1000
    assert create.contract.content_types == (
        "application/json",
        "application/x-www-form-urlencoded",
    )
    body = json.loads(create.contract.body.text)
    assert body["$defs"]["Line"] == {
        "type": ["object", "null"],
        "properties": {"sku": {"type": "string"}},
    }
    assert body["$ref"] == "#/$defs/Order"
    assert body["$defs"]["Order"]["properties"]["lines"]["items"] == {"$ref": "#/$defs/Line"}
    delete = routes["delete-shop-orders-order_id-lines-n"]
    assert delete.public and delete.path == "/shop/orders/{order_id}/lines/{n}"
    assert delete.contract is not None
    assert {p.name for p in delete.contract.parameters} == {"order_id", "n"}
    assert str(tmp_path / "api.yaml") in config.documents[0]


@pytest.mark.parametrize(
    "edit,line,message",
    [
        (("openapi: 3.1.0", "openapi: 2.0"), 1, "not an OpenAPI 3.0 or 3.1 document"),
        (
            ("  /orders/{order-id}/lines/{n}:", "  /orders/{order-id}.json:"),
            25,
            "a parameter must fill a whole segment",
        ),
        (
            ("    delete:\n      security: []", "    delete:\n      security: [{other: []}]"),
            30,
            "security scheme 'other' is not mapped",
        ),
        (
            (
                "        - oauth: [shop:write]\n        - key: [shop:write]",
                "        - oauth: [shop:write]\n        - key: [shop:admin]",
            ),
            16,
            "different scopes",
        ),
        (
            ("{type: integer, minimum: 0}", "{type: integer, minimum: zero}"),
            34,
            "not a valid JSON Schema",
        ),
        (
            ("        sku: {type: string}", '        sku: {type: string, pattern: "(?<=a)b"}'),
            46,
            "linear time",
        ),
        (
            ('$ref: "#/components/parameters/N"', '$ref: "other.yaml#/N"'),
            28,
            "only local references",
        ),
        (
            (
                'items: {$ref: "#/components/schemas/Line"}',
                'items: {$ref: "#/components/schemas/Nope"}',
            ),
            21,
            "#/components/schemas/Nope does not exist",
        ),
        (("security:\n  - oauth: [shop:read]\n", ""), 5, "no security requirement"),
        (
            ("application/x-www-form-urlencoded:", "multipart/form-data:"),
            22,
            "JSON and form bodies only",
        ),
        (
            (
                "paths:",
                "paths:\n  /x:\n    get: {operationId: health, security: [], responses: {}}",
            ),
            7,
            "duplicate route name 'health'",
        ),
    ],
)
def test_unusable_documents_are_located(
    tmp_path: Path, edit: tuple[str, str], line: int, message: str
) -> None:
    assert edit[0] in DOC
    found = problems(tmp_path, DOC.replace(edit[0], edit[1], 1))
    api = str(tmp_path / "api.yaml")
    assert any(loc.startswith(f"{api}:{line}:") and message in msg for loc, msg in found), found


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    found = problems(tmp_path, "openapi: 3.1.0\npaths: {\n")
    assert found[0][0].startswith(str(tmp_path / "api.yaml") + ":")
    assert "invalid YAML" in found[0][1]
    found = problems(tmp_path, DOC, POLICY.replace("file: api.yaml", "file: nope.yaml"))
    assert found[0][0] == f"{tmp_path / 'policy.yaml'}:7:11"
    assert "cannot read the OpenAPI document" in found[0][1]


def test_unknown_provider_in_mapping(tmp_path: Path) -> None:
    found = problems(tmp_path, DOC, POLICY.replace("key: [keys]", "key: [nobody]"))
    assert any("no provider named 'nobody'" in msg for _, msg in found), found


def test_authz_validate_reports_the_openapi_location(tmp_path: Path) -> None:
    path = write(tmp_path, DOC.replace("minimum: 0}", "minimum: zero}"))
    result = subprocess.run(
        [sys.executable, "-m", "authz", "validate", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert f"{tmp_path / 'api.yaml'}:34:" in result.stderr
    assert "Traceback" not in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "authz", "validate", str(write(tmp_path))],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0
    assert "4 routes (3 from OpenAPI)" in result.stdout


def test_policy_contract_errors_are_located(tmp_path: Path) -> None:
    policy = """\
routes:
  - name: r
    path: /r/{id}
    methods: [POST]
    public: true
    contract:
      content_types: [text/plain]
      body: {type: object, properties: {a: {type: strin}}}
      parameters:
        - {name: nope, in: path}
        - {name: q, in: query, schema: {pattern: "(a)\\\\1"}}
        - {name: q, in: query}
"""
    path = tmp_path / "p.yaml"
    path.write_text(policy)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    found = [(loc.rsplit(":", 2)[1], msg) for loc, msg in info.value.problems]
    lines = {line for line, _ in found}
    assert {"7", "8", "10", "11", "12"} <= lines, found
    messages = " | ".join(msg for _, msg in found)
    assert "JSON (application/json" in messages
    assert "has no parameter {nope}" in messages
    assert "declared twice" in messages
    assert "linear time" in messages
