"""`authz diff`: every kind of change, per route, in text and JSON, with the
widenings the reload logs; exit 0 same, 1 changed, 2 error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz.cli import main
from authz.policy.changes import compare
from authz.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[2]

OLD = """\
version: 1
mode: enforce
undeclared_routes: deny
providers:
  idp: {type: jwt, issuer: https://idp.example, audiences: [api], jwks_uri: https://idp.example/jwks}
  mesh: {type: mtls, trust_domains: [prod.local]}
rate_limits:
  rules:
    - {name: per-address, rate: 100/s, burst: 200, key: [client_address]}
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
  - name: orders
    path: /v1/orders
    methods: [GET]
    providers: [idp]
    scopes: [orders:read, orders:admin]
    claims: {tenant: [acme]}
    rate_limits:
      - {name: per-caller, rate: 20/s, burst: 40, key: [subject]}
  - name: create
    path: /v1/orders
    methods: [POST]
    providers: [idp]
    scopes: [orders:write]
    contract:
      body:
        type: object
        required: [items]
        properties:
          items: {type: array, maxItems: 50}
  - name: sync
    path: /internal/sync
    methods: [POST]
    providers: [mesh]
    spiffe_ids: [spiffe://prod.local/ns/sync/sa/a]
  - {name: old, path: /v0/legacy, methods: [GET], providers: [idp]}
enforcement:
  throttle: {requests: 3, per: 10s}
detection:
  mode: monitor
  detectors:
    credential_stuffing: {failures: 20}
"""

NEW = """\
version: 1
mode: enforce
undeclared_routes: monitor
providers:
  idp: {type: jwt, issuer: https://idp.example, audiences: [api, billing], jwks_uri: https://idp.example/jwks}
  mesh: {type: mtls, trust_domains: [prod.local]}
rate_limits:
  rules:
    - {name: per-address, rate: 100/s, burst: 400, key: [client_address]}
routes:
  - {name: health, path: /healthz, methods: [GET, HEAD], public: true}
  - name: orders
    path: /v1/orders
    methods: [GET]
    providers: [idp, mesh]
    scopes: [orders:read]
    claims: {tenant: [acme, globex]}
    mode: monitor
  - name: create
    path: /v1/orders
    methods: [POST]
    providers: [idp]
    scopes: [orders:write]
    contract:
      body:
        type: object
        required: [items]
        properties:
          items: {type: array, maxItems: 100}
          note: {type: string}
  - name: sync
    path: /internal/sync
    methods: [POST]
    public: true
  - {name: refunds, path: /v1/refunds, methods: [POST], providers: [idp], scopes: [refunds:write]}
enforcement:
  throttle: {requests: 5, per: 10s}
detection:
  mode: enforce
  detectors:
    credential_stuffing: {failures: 50}
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "old.yaml").write_text(OLD)
    (tmp_path / "new.yaml").write_text(NEW)
    return str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")


def test_every_kind_of_change(files: tuple[str, str]) -> None:
    diff = compare(load_policy(files[0]), load_policy(files[1]))
    routes = {s.name: s for s in diff.routes}
    assert {n: s.change for n, s in routes.items()} == {
        "health": "changed", "orders": "changed", "create": "changed", "sync": "changed",
        "refunds": "added", "old": "removed",
    }  # fmt: skip
    fields = {n: {c.field: (c.old, c.new) for c in s.changes} for n, s in routes.items()}
    assert fields["health"] == {"methods": (["GET"], ["GET", "HEAD"])}
    orders = fields["orders"]
    assert orders["providers"] == (["idp"], ["idp", "mesh"])
    assert orders["scopes"] == (["orders:read", "orders:admin"], ["orders:read"])
    assert orders["claims.tenant"] == (["acme"], ["acme", "globex"])
    assert orders["mode"] == ("enforce", "monitor")
    assert orders["rate_limits[per-caller]"][1] is None
    create = next(c for c in routes["create"].changes if c.field == "contract.body")
    assert create.summary == (
        "2 change(s): /properties/items/maxItems 50 -> 100; /properties/note added"
    )
    assert fields["sync"]["public"] == (False, True)
    assert fields["sync"]["spiffe_ids"] == (["spiffe://prod.local/ns/sync/sa/a"], [])
    assert {c.field for c in routes["refunds"].changes} == {"mode", "scopes", "providers"}
    assert (routes["refunds"].methods, routes["refunds"].path) == (("POST",), "/v1/refunds")
    policy = {c.field: (c.old, c.new) for c in diff.policy}
    assert policy["undeclared_routes"] == ("deny", "monitor")
    assert policy["rate_limits.rules[per-address].burst"] == (200, 400)
    assert policy["enforcement.throttle.requests"] == (3, 5)
    assert policy["detection.mode"] == ("monitor", "enforce")
    assert policy["detection.credential_stuffing.failures"] == (20, 50)
    [idp] = diff.providers
    assert (idp.name, [c.field for c in idp.changes]) == ("idp", ["audiences"])
    # the reload's widening findings, attached to their routes
    codes = {f.code for f in routes["orders"].widenings}
    assert {"scopes_removed", "provider_added", "route_monitor", "claim_values_added"} <= codes
    assert {f.code for f in routes["sync"].widenings} == {"route_public"}
    assert "undeclared_monitor" in {f.code for f in diff.widenings if f.route is None}


def test_text_is_grouped_per_route(
    files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diff", *files]) == 1
    out = capsys.readouterr().out
    assert "route orders (changed)  GET /v1/orders\n" in out
    assert '  scopes: ["orders:read", "orders:admin"] -> ["orders:read"]\n' in out
    assert (
        "  ! warning: widens access: route orders: no longer requires scope(s) orders:admin" in out
    )
    assert "route old (removed)  GET /v0/legacy\n" in out
    assert "route refunds (added)  POST /v1/refunds\n" in out
    assert "policy\n  undeclared_routes: deny -> monitor\n" in out
    assert "  detection.credential_stuffing.failures: 20 -> 50\n" in out
    assert (
        out.rstrip().splitlines()[-1].startswith("6 route(s) differ: 4 changed, 1 added, 1 removed")
    )


def test_json_is_stable(files: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "--json", *files]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"old", "new", "changed", "policy", "providers", "routes", "widenings"}
    assert doc["changed"] is True
    route = next(r for r in doc["routes"] if r["name"] == "orders")
    assert set(route) == {"name", "change", "methods", "path", "changes", "widenings"}
    assert {"field": "mode", "old": "enforce", "new": "monitor"} in route["changes"]
    assert set(route["widenings"][0]) == {"level", "code", "message", "route"}


def test_the_example_change_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    old, new = str(REPO / "examples/policy.yaml"), str(REPO / "examples/policy.scope-added.yaml")
    assert main(["diff", old, old]) == 0
    assert capsys.readouterr().out.endswith("no change\n")
    assert main(["diff", old, new]) == 1
    out = capsys.readouterr().out
    assert "route get-order (changed)  GET /v1/orders/{id}\n" in out
    assert '  scopes: ["orders:read"] -> ["orders:read", "orders:history"]\n' in out
    assert "1 route(s) differ: 1 changed" in out


def test_a_policy_that_does_not_load_is_exit_2(
    files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nroutes: 3\n")
    assert main(["diff", files[0], str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:9: $.routes" in err and f"authz diff: {bad} does not load" in err


def test_store_passwords_are_masked(tmp_path: Path) -> None:
    from authz.policy.changes import plain

    assert plain("redis://user:s3cret@cache:6379/0") == "redis://user:***@cache:6379/0"
