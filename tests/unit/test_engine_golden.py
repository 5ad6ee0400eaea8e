"""Golden table: CheckRequest -> PolicyEngine -> CheckResponse, through the real protobuf path.

Each case is one dict: a request (the keyword arguments of ``build_check_request``)
and the expected outcome. Adding a case is one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from authz.audit.sink import MemorySink
from authz.engine import CompiledPolicy, PolicyEngine, path_shape
from authz.model import Identity, Request
from authz.policy.loader import load_policy
from authz.transport.envoy_grpc import build_check_request, to_check_response, to_request

NOW = 1_800_000_000.0  # 2027-01-15, the injected clock
READER = "reader-key-0123456789abcdef"
WRITER = "writer-key-0123456789abcdef"
OLD = "old-key-0123456789abcdef"
SECRET = "SeCrEtToKeN-9f8e7d6c"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


POLICY = f"""\
version: 1
mode: enforce
undeclared_routes: deny
realm: shop
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {{id: reader, sha256: {sha(READER)}, owner: reporting-team, scopes: [orders:read], expires: "2030-01-01"}}
      - {{id: writer, sha256: {sha(WRITER)}, owner: writer-team, scopes: [orders:read, orders:write], expires: "2030-01-01"}}
      - {{id: old, sha256: {sha(OLD)}, owner: old-team, scopes: [orders:read], expires: "2020-01-01"}}
  mesh:
    type: mtls
    trust_domains: [td.local]
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: list-orders, path: /v1/orders, methods: [GET], providers: [keys], scopes: [orders:read]}}
  - {{name: create-order, path: /v1/orders, methods: [POST], providers: [keys], scopes: [orders:write], strip_credential: true}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET, DELETE], providers: [mesh, keys], scopes: [orders:read]}}
  - {{name: reports, path: /v1/reports, methods: [GET], providers: [keys], claims: {{owner: [reporting-team, audit-team]}}}}
  - {{name: metrics, path: /internal/metrics, methods: [GET], providers: [mesh], spiffe_ids: ["spiffe://td.local/ns/ops/sa/prometheus"]}}
  - {{name: sync, path: "/internal/sync/{{rest=**}}", methods: [POST], providers: [mesh], spiffe_ids: ["spiffe://td.local/ns/sync/*"]}}
  - {{name: mesh-any, path: /internal/any, methods: [GET], providers: [mesh]}}
  - {{name: beta, path: /v1/beta, methods: [GET], providers: [keys], scopes: [beta:use], mode: monitor}}
  - {{name: admin-host, path: /admin, methods: [GET], hosts: [admin.shop.example], providers: [mesh]}}
"""

ID_HEADERS = (
    "x-authz-subject",
    "x-authz-identity-type",
    "x-authz-issuer",
    "x-authz-scopes",
    "x-authz-provider",
    "x-authz-decision-id",
    "x-authz-ratelimit",
)
CHALLENGE_MISSING = 'Bearer realm="shop"'
CHALLENGE_INVALID = 'Bearer realm="shop", error="invalid_token"'

PROMETHEUS = "spiffe://td.local/ns/ops/sa/prometheus"
SYNCER = "spiffe://td.local/ns/sync/sa/worker"
SPOOF = {
    "x-authz-subject": "admin",
    "x-authz-identity-type": "jwt",
    "x-authz-issuer": "https://evil",
    "x-authz-scopes": "orders:write admin",
    "x-authz-provider": "keys",
    "x-authz-decision-id": "forged",
}


def _cert(uri: str) -> str:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), safe="")


PROMETHEUS_CERT = _cert(PROMETHEUS)


def api(key: str, **extra: str) -> dict[str, str]:
    return {"x-api-key": key, **extra}


# expected keys:
#   status   HTTP status of the true decision (200 on allow)
#   reason   decision reason (metadata and deny body)
#   allowed  whether the request goes upstream (default: status == 200)
#   www      exact WWW-Authenticate value, or None for "no such header" (denies only)
#   allow    exact Allow header value (405)
#   subject  subject in metadata / upstream header ("" for anonymous)
#   kind     identity type upstream
#   scopes   x-authz-scopes upstream (None: removed)
#   issuer   x-authz-issuer upstream (None: removed)
#   strip    extra headers that must be in headers_to_remove
CASES: list[dict[str, Any]] = [
    # --- public
    dict(name="public", request=dict(method="GET", path="/healthz"), expected=dict(status=200, reason="allowed", subject="", kind=None)),
    dict(name="public ignores a bad key", request=dict(method="GET", path="/healthz", headers=api("nope")), expected=dict(status=200, reason="allowed", subject="", kind=None)),
    dict(name="public spoofed identity headers removed", request=dict(method="GET", path="/healthz", headers=SPOOF), expected=dict(status=200, reason="allowed", subject="", kind=None)),
    dict(name="public canonical path", request=dict(method="GET", path="//healthz?x=1"), expected=dict(status=200, reason="allowed", subject="", kind=None)),
    # --- api key + scopes
    dict(name="key with scope", request=dict(method="GET", path="/v1/orders", headers=api(READER)), expected=dict(status=200, reason="allowed", subject="reporting-team", kind="api_key", scopes="orders:read", issuer="keys")),
    dict(name="key with scope, dot segments", request=dict(method="GET", path="/v1/x/../orders", headers=api(READER)), expected=dict(status=200, reason="allowed", subject="reporting-team", kind="api_key", scopes="orders:read", issuer="keys")),
    dict(name="key scopes sorted", request=dict(method="GET", path="/v1/orders/7", headers=api(WRITER)), expected=dict(status=200, reason="allowed", subject="writer-team", kind="api_key", scopes="orders:read orders:write", issuer="keys")),
    dict(name="spoofed subject overwritten", request=dict(method="GET", path="/v1/orders", headers=api(READER, **SPOOF)), expected=dict(status=200, reason="allowed", subject="reporting-team", kind="api_key", scopes="orders:read", issuer="keys")),
    dict(name="missing credential", request=dict(method="GET", path="/v1/orders"), expected=dict(status=401, reason="missing_credential", www=CHALLENGE_MISSING)),
    dict(name="missing credential, only spoofed headers", request=dict(method="GET", path="/v1/orders", headers=SPOOF), expected=dict(status=401, reason="missing_credential", www=CHALLENGE_MISSING)),
    dict(name="unknown key", request=dict(method="GET", path="/v1/orders", headers=api("wrong")), expected=dict(status=401, reason="api_key_unknown", www=CHALLENGE_INVALID)),
    dict(name="expired key", request=dict(method="GET", path="/v1/orders", headers=api(OLD)), expected=dict(status=401, reason="api_key_expired", www=CHALLENGE_INVALID)),
    dict(name="two keys", request=dict(method="GET", path="/v1/orders", headers=api(f"{READER},{WRITER}")), expected=dict(status=401, reason="multiple_credentials", www='Bearer realm="shop", error="invalid_request"')),
    dict(name="missing scope", request=dict(method="POST", path="/v1/orders", headers=api(READER)), expected=dict(status=403, reason="insufficient_scope", www='Bearer realm="shop", error="insufficient_scope", scope="orders:write"')),
    dict(name="strip credential", request=dict(method="POST", path="/v1/orders", headers=api(WRITER)), expected=dict(status=200, reason="allowed", subject="writer-team", kind="api_key", scopes="orders:read orders:write", issuer="keys", strip=["x-api-key"])),
    # --- claims (api_key identities carry key_id and owner claims)
    dict(name="claim matches one of", request=dict(method="GET", path="/v1/reports", headers=api(READER)), expected=dict(status=200, reason="allowed", subject="reporting-team", kind="api_key", scopes="orders:read", issuer="keys")),
    dict(name="claim mismatch", request=dict(method="GET", path="/v1/reports", headers=api(WRITER)), expected=dict(status=403, reason="claim_mismatch", www=None)),
    # --- mTLS, several providers on a route
    dict(name="mtls principal, no scopes on identity", request=dict(method="GET", path="/v1/orders/1", principal=PROMETHEUS), expected=dict(status=403, reason="insufficient_scope", www='Bearer realm="shop", error="insufficient_scope", scope="orders:read"')),
    dict(name="second provider used when first abstains", request=dict(method="DELETE", path="/v1/orders/1", headers=api(READER)), expected=dict(status=200, reason="allowed", subject="reporting-team", kind="api_key", scopes="orders:read", issuer="keys")),
    dict(name="spiffe exact", request=dict(method="GET", path="/internal/metrics", principal=PROMETHEUS), expected=dict(status=200, reason="allowed", subject=PROMETHEUS, kind="mtls", scopes=None, issuer="spiffe://td.local")),
    dict(name="spiffe exact from certificate", request=dict(method="GET", path="/internal/metrics", certificate=PROMETHEUS_CERT), expected=dict(status=200, reason="allowed", subject=PROMETHEUS, kind="mtls", scopes=None, issuer="spiffe://td.local")),
    dict(name="spiffe exact, spoofed scopes removed", request=dict(method="GET", path="/internal/metrics", principal=PROMETHEUS, headers=SPOOF), expected=dict(status=200, reason="allowed", subject=PROMETHEUS, kind="mtls", scopes=None, issuer="spiffe://td.local")),
    dict(name="spiffe exact, other id", request=dict(method="GET", path="/internal/metrics", principal=SYNCER), expected=dict(status=403, reason="spiffe_id_not_allowed", www=None)),
    dict(name="spiffe exact is not a prefix", request=dict(method="GET", path="/internal/metrics", principal=PROMETHEUS + "/x"), expected=dict(status=403, reason="spiffe_id_not_allowed", www=None)),
    dict(name="spiffe prefix", request=dict(method="POST", path="/internal/sync/a/b", principal=SYNCER), expected=dict(status=200, reason="allowed", subject=SYNCER, kind="mtls", scopes=None, issuer="spiffe://td.local")),
    dict(name="spiffe prefix, sibling namespace", request=dict(method="POST", path="/internal/sync/a", principal="spiffe://td.local/ns/syncer/sa/x"), expected=dict(status=403, reason="spiffe_id_not_allowed", www=None)),
    dict(name="spiffe prefix, namespace itself", request=dict(method="POST", path="/internal/sync/a", principal="spiffe://td.local/ns/sync"), expected=dict(status=403, reason="spiffe_id_not_allowed", www=None)),
    dict(name="mtls untrusted domain", request=dict(method="GET", path="/internal/any", principal="spiffe://evil.local/ns/ops/sa/prometheus"), expected=dict(status=401, reason="untrusted_trust_domain", www=CHALLENGE_INVALID)),
    dict(name="mtls malformed id", request=dict(method="GET", path="/internal/any", principal="spiffe://td.local/ns/../x"), expected=dict(status=401, reason="peer_identity_invalid", www=CHALLENGE_INVALID)),
    dict(name="mtls xfcc header alone", request=dict(method="GET", path="/internal/any", headers={"x-forwarded-client-cert": f"URI={PROMETHEUS}"}), expected=dict(status=401, reason="missing_credential", www=CHALLENGE_MISSING)),
    dict(name="mtls any id in trust domain", request=dict(method="GET", path="/internal/any", principal=SYNCER), expected=dict(status=200, reason="allowed", subject=SYNCER, kind="mtls", scopes=None, issuer="spiffe://td.local")),
    # --- hosts
    dict(name="host route", request=dict(method="GET", path="/admin", host="admin.shop.example:443", principal=SYNCER), expected=dict(status=200, reason="allowed", subject=SYNCER, kind="mtls", scopes=None, issuer="spiffe://td.local")),
    dict(name="host route on other host", request=dict(method="GET", path="/admin", host="shop.example", principal=SYNCER), expected=dict(status=404, reason="undeclared_route", www=None)),
    # --- per-route monitor: true decision in metadata, request allowed
    dict(name="monitor route, missing scope", request=dict(method="GET", path="/v1/beta", headers=api(READER)), expected=dict(status=403, allowed=True, reason="insufficient_scope", subject="reporting-team", kind="api_key", scopes="orders:read", issuer="keys")),
    dict(name="monitor route, no credential", request=dict(method="GET", path="/v1/beta"), expected=dict(status=401, allowed=True, reason="missing_credential", subject="", kind=None)),
    # --- routing
    dict(name="undeclared", request=dict(method="GET", path="/v1/users/42"), expected=dict(status=404, reason="undeclared_route", www=None)),
    dict(name="method not allowed", request=dict(method="PUT", path="/v1/orders", headers=api(WRITER)), expected=dict(status=405, reason="method_not_allowed", www=None, allow="GET, POST")),
    dict(name="method not allowed, template", request=dict(method="PATCH", path="/v1/orders/9"), expected=dict(status=405, reason="method_not_allowed", www=None, allow="DELETE, GET")),
    # --- unreadable paths: 400
    dict(name="encoded slash", request=dict(method="GET", path="/v1/orders%2f1", headers=api(READER)), expected=dict(status=400, reason="invalid_path", www=None)),
    dict(name="encoded dot segment", request=dict(method="GET", path="/v1/orders/%2e%2e/reports", headers=api(READER)), expected=dict(status=400, reason="invalid_path", www=None)),
    dict(name="encoded NUL", request=dict(method="GET", path="/healthz%00"), expected=dict(status=400, reason="invalid_path", www=None)),
    dict(name="overlong utf-8", request=dict(method="GET", path="/%C0%AFhealthz"), expected=dict(status=400, reason="invalid_path", www=None)),
    dict(name="backslash", request=dict(method="GET", path="/v1\\orders"), expected=dict(status=400, reason="invalid_path", www=None)),
]  # fmt: skip

UNDECLARED_MONITOR_CASES: list[dict[str, Any]] = [
    dict(name="undeclared monitored", request=dict(method="GET", path="/shadow/api", headers=SPOOF), expected=dict(status=404, allowed=True, reason="undeclared_route", subject="", kind=None)),
    dict(name="declared route still enforced", request=dict(method="GET", path="/v1/orders"), expected=dict(status=401, reason="missing_credential", www=CHALLENGE_MISSING)),
    dict(name="invalid path still denied", request=dict(method="GET", path="/a%2fb"), expected=dict(status=400, reason="invalid_path", www=None)),
]  # fmt: skip


# --------------------------------------------------------------------------- machinery


def make_engine(tmp_path: Path, text: str = POLICY) -> tuple[PolicyEngine, MemorySink]:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text), "utf-8")
    policy = CompiledPolicy(load_policy(path), clock=lambda: NOW)
    sink = MemorySink()
    counter = itertools.count(1)
    engine = PolicyEngine(
        policy, sink=sink, clock=lambda: NOW, id_factory=lambda: f"dec-{next(counter)}"
    )
    return engine, sink


async def run(engine: PolicyEngine, request: dict[str, Any], request_id: str = "req-1") -> Any:
    kw = {"host": "shop.example", "headers": {}, "request_id": request_id, **request}
    check = build_check_request(**kw)
    # round-trip through the wire format, as Envoy would send it
    check = type(check).FromString(check.SerializeToString())
    response = to_check_response(await engine.check(to_request(check)))
    return type(response).FromString(response.SerializeToString())


def headers_of(options: Any) -> dict[str, str]:
    out = {}
    for option in options:
        assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        out[option.header.key] = option.header.value
    return out


def metadata_of(response: Any) -> dict[str, Any]:
    return json_format.MessageToDict(response.dynamic_metadata)


def check_response(response: Any, expected: dict[str, Any], request_id: str = "req-1") -> None:
    status = expected["status"]
    allowed = expected.get("allowed", status == 200)
    meta = metadata_of(response)
    assert set(meta) == {"decision_id", "subject", "reason", "policy_version"}
    assert meta["reason"] == expected["reason"]
    assert meta["decision_id"].startswith("dec-")
    assert meta["policy_version"].startswith("sha256:")
    if allowed:
        assert response.status.code == 0
        assert response.HasField("ok_response")
        assert not response.HasField("denied_response")
        ok = response.ok_response
        upstream = headers_of(ok.headers)
        removed = list(ok.headers_to_remove)
        assert upstream["x-authz-decision-id"] == meta["decision_id"]
        assert meta["subject"] == expected["subject"]
        # every identity header the service owns is either set (overwriting any
        # client-sent copy) or removed: a client copy never reaches the upstream
        for name in ID_HEADERS:
            assert (name in upstream) != (name in removed), name
        if expected.get("kind") is None:  # anonymous
            assert upstream == {"x-authz-decision-id": meta["decision_id"]}
        else:
            assert upstream["x-authz-subject"] == expected["subject"]
            assert upstream["x-authz-identity-type"] == expected["kind"]
            assert upstream.get("x-authz-scopes") == expected.get("scopes")
            assert upstream.get("x-authz-issuer") == expected.get("issuer")
        for header in expected.get("strip", []):
            assert header in removed
        if not expected.get("strip"):
            assert "x-api-key" not in removed
        assert set(removed) <= set(ID_HEADERS) | set(expected.get("strip", []))
        return
    assert response.status.code == (16 if status == 401 else 7)
    assert response.status.message == expected["reason"]
    assert response.HasField("denied_response")
    assert not response.HasField("ok_response")
    denied = response.denied_response
    assert denied.status.code == status
    got = headers_of(denied.headers)
    assert got["content-type"] == "application/json"
    assert got.get("www-authenticate") == expected.get("www")
    assert got.get("allow") == expected.get("allow")
    assert set(got) <= {"content-type", "www-authenticate", "allow"}
    assert json.loads(denied.body) == {"error": expected["reason"], "request_id": request_id}


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


def test_case_names_unique() -> None:
    names = _ids(CASES) + _ids(UNDECLARED_MONITOR_CASES)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
async def test_golden(tmp_path: Path, case: dict[str, Any]) -> None:
    engine, sink = make_engine(tmp_path)
    response = await run(engine, case["request"])
    check_response(response, case["expected"])
    # exactly one decision record, agreeing with the response
    assert len(sink.records) == 1
    record = sink.records[0]
    assert record["reason"] == case["expected"]["reason"]
    assert record["status"] == case["expected"]["status"]
    assert record["decision_id"] == metadata_of(response)["decision_id"]


@pytest.mark.parametrize("case", UNDECLARED_MONITOR_CASES, ids=_ids(UNDECLARED_MONITOR_CASES))
async def test_golden_undeclared_monitor(tmp_path: Path, case: dict[str, Any]) -> None:
    engine, _ = make_engine(
        tmp_path, POLICY.replace("undeclared_routes: deny", "undeclared_routes: monitor")
    )
    check_response(await run(engine, case["request"]), case["expected"])


async def test_global_monitor_mode(tmp_path: Path) -> None:
    engine, sink = make_engine(tmp_path, POLICY.replace("mode: enforce", "mode: monitor"))
    response = await run(engine, dict(method="POST", path="/v1/orders", headers=api(READER)))
    check_response(response, dict(status=403, allowed=True, reason="insufficient_scope", subject="reporting-team", kind="api_key", scopes="orders:read", issuer="keys", strip=["x-api-key"]))  # fmt: skip
    assert sink.records[0]["decision"] == "monitor"
    # undeclared routes are monitored too in global monitor mode
    check_response(await run(engine, dict(method="GET", path="/nowhere")), dict(status=404, allowed=True, reason="undeclared_route", subject="", kind=None))  # fmt: skip
    # an unreadable path is never let through
    check_response(await run(engine, dict(method="GET", path="/a%2fb")), dict(status=400, reason="invalid_path", www=None))  # fmt: skip


async def test_undeclared_counted_by_shape(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path)
    for path in ("/v1/users/42", "/v1/users/43", "/v1/users/43?x=1"):
        check_response(await run(engine, dict(method="GET", path=path)), dict(status=404, reason="undeclared_route", www=None))  # fmt: skip
    await run(engine, dict(method="POST", path="/v1/users/7"))
    await run(engine, dict(method="GET", path="/v1/users/0b7e3c1a-8f7d-4c0e-9a5b-1d2e3f4a5b6c/x"))
    assert engine.undeclared == {
        ("GET", "/v1/users/{id}"): 3,
        ("POST", "/v1/users/{id}"): 1,
        ("GET", "/v1/users/{id}/x"): 1,
    }
    # a 405 is not an undeclared route
    await run(engine, dict(method="PUT", path="/v1/orders"))
    assert sum(engine.undeclared.values()) == 5
    assert path_shape("/a/deadbeefdeadbeef/b") == "/a/{id}/b"


class Boom:
    name = "keys"
    kind = "api_key"

    async def start(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    async def authenticate(self, request: Request) -> Identity | None:
        raise RuntimeError("boom: /etc/secret-config at db-7.internal")


async def test_provider_crash_is_internal_error(tmp_path: Path) -> None:
    engine, sink = make_engine(tmp_path)
    policy = engine.policy
    policy.providers["keys"] = Boom()  # type: ignore[assignment]
    for name, plan in list(policy.plans.items()):
        if "keys" in plan.route.providers:
            providers = tuple(Boom() if p.name == "keys" else p for p in plan.providers)
            policy.plans[name] = dataclasses.replace(plan, providers=providers)  # type: ignore[arg-type]
    response = await run(engine, dict(method="GET", path="/v1/orders", headers=api(READER)))
    check_response(response, dict(status=500, reason="internal_error", www=None))
    assert "boom" not in response.denied_response.body
    assert "secret" not in response.SerializeToString().decode("utf-8", "replace")
    assert sink.records[-1]["reason"] == "internal_error"
    assert sink.records[-1]["status"] == 500
    assert sink.records[-1]["route"] == "list-orders"
    # other routes are unaffected and Check keeps answering
    check_response(await run(engine, dict(method="GET", path="/healthz")), dict(status=200, reason="allowed", subject="", kind=None))  # fmt: skip


async def test_engine_never_raises_on_broken_sink(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path)

    class BrokenSink:
        def emit(self, record: dict[str, Any]) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            return None

    engine._sink = BrokenSink()
    check_response(await run(engine, dict(method="GET", path="/healthz")), dict(status=200, reason="allowed", subject="", kind=None))  # fmt: skip


REQUIRED_FIELDS = {
    "time", "request_id", "decision_id", "route", "method", "path", "identity_type", "subject",
    "issuer", "decision", "status", "reason", "policy_version", "latency_ms",
}  # fmt: skip


async def test_decision_records(tmp_path: Path) -> None:
    engine, sink = make_engine(tmp_path)
    version = engine.policy.version
    requests = [
        dict(method="GET", path=f"/v1/orders?access_token={SECRET}", headers=api(READER)),
        dict(method="GET", path=f"/v1/orders?api_key={READER}", headers=api(READER)),
        dict(method="POST", path=f"/v1/orders?access_token={SECRET}", headers=api(READER)),
        dict(method="GET", path=f"/v1/orders?access_token={SECRET}", headers=api(WRITER + "x")),
        dict(method="GET", path=f"/v1/%2e%2e/orders?access_token={SECRET}", headers=api(READER)),
        dict(method="GET", path=f"/v1/a%2fb?access_token={SECRET}&k={READER}"),
        dict(method="GET", path=f"/nowhere/{{x}}?access_token={SECRET}"),
        dict(method="GET", path=f"/internal/metrics?access_token={SECRET}", principal=PROMETHEUS),
    ]
    for i, request in enumerate(requests):
        await run(engine, request, request_id=f"req-{i}")
    assert len(sink.records) == len(requests)
    for i, record in enumerate(sink.records):
        assert set(record) >= REQUIRED_FIELDS, record
        text = json.dumps(record)
        assert SECRET not in text
        assert "access_token" not in text
        assert READER not in text and WRITER not in text
        assert record["request_id"] == f"req-{i}"
        assert record["time"] == NOW
        assert record["policy_version"] == version
        assert isinstance(record["latency_ms"], float) and record["latency_ms"] >= 0
    r = sink.records
    assert (r[0]["decision"], r[0]["status"], r[0]["reason"]) == ("allow", 200, "allowed")
    assert (r[0]["route"], r[0]["method"], r[0]["path"]) == ("list-orders", "GET", "/v1/orders")
    assert (r[0]["identity_type"], r[0]["subject"], r[0]["issuer"]) == (
        "api_key",
        "reporting-team",
        "keys",
    )
    assert (r[2]["decision"], r[2]["status"], r[2]["reason"]) == ("deny", 403, "insufficient_scope")
    assert (r[3]["reason"], r[3]["identity_type"], r[3]["subject"]) == (
        "api_key_unknown",
        "anonymous",
        "",
    )
    assert (r[4]["reason"], r[4]["path"], r[4]["route"]) == (
        "invalid_path",
        "/v1/%2e%2e/orders",
        "",
    )
    assert (r[5]["reason"], r[5]["path"]) == ("invalid_path", "/v1/a%2fb")
    assert (r[6]["reason"], r[6]["route"]) == ("undeclared_route", "")
    assert (r[7]["identity_type"], r[7]["subject"], r[7]["issuer"]) == (
        "mtls",
        PROMETHEUS,
        "spiffe://td.local",
    )
    assert len({rec["decision_id"] for rec in r}) == len(r)  # fmt: skip


async def test_monitor_record_says_monitor(tmp_path: Path) -> None:
    engine, sink = make_engine(tmp_path)
    await run(engine, dict(method="GET", path="/v1/beta", headers=api(READER)))
    assert (sink.records[0]["decision"], sink.records[0]["reason"], sink.records[0]["status"]) == ("monitor", "insufficient_scope", 403)  # fmt: skip


async def test_fragment_token_never_logged(tmp_path: Path) -> None:
    engine, sink = make_engine(tmp_path)
    check = build_check_request(method="GET", path="/v1/orders", host="shop.example", headers={})
    check.attributes.request.http.fragment = f"access_token={SECRET}"
    decision = await engine.check(to_request(check))
    assert decision.reason == "invalid_path"
    assert SECRET not in json.dumps(sink.records[0])


async def test_request_id_falls_back_to_envoy_id(tmp_path: Path) -> None:
    engine, sink = make_engine(tmp_path)
    check = build_check_request(method="GET", path="/nowhere", host="h", headers={})
    check.attributes.request.http.id = "envoy-id-1"
    response = to_check_response(await engine.check(to_request(check)))
    assert json.loads(response.denied_response.body)["request_id"] == "envoy-id-1"
    assert sink.records[0]["request_id"] == "envoy-id-1"


async def test_internal_error_on_monitor_route_is_denied(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path)
    policy = engine.policy
    policy.plans["beta"] = dataclasses.replace(policy.plans["beta"], providers=(Boom(),))  # type: ignore[arg-type]
    response = await run(engine, dict(method="GET", path="/v1/beta", headers=api(READER)))
    check_response(response, dict(status=500, reason="internal_error", www=None))
