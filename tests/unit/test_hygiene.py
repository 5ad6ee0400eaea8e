"""Request hygiene (authz.hygiene): ambiguous Host, method override, client-sent
identity headers removed, encoded bodies on validated routes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from authz.engine import CompiledPolicy, PolicyEngine
from authz.errors import PolicyError
from authz.hygiene import has_method_parameter, identity_encoding
from authz.model import Decision, Request
from authz.policy.config import DEFAULT_STRIP_HEADERS
from authz.policy.loader import load_policy_bytes

POLICY = """\
{hygiene}
routes:
  - {{name: open, path: /open, methods: [GET, POST], public: true}}
  - name: orders
    path: /orders
    methods: [POST]
    public: true
    contract:
      content_types: [application/json]
      body: {{type: object}}
"""


def engine(hygiene: str = "") -> PolicyEngine:
    text = POLICY.format(hygiene=hygiene)
    config = load_policy_bytes(text.encode(), source="p.yaml", base_dir=Path("."))
    return PolicyEngine(CompiledPolicy(config))


def decide(
    eng: PolicyEngine, path: str = "/open", headers: dict[str, str] | None = None, *,
    host: str = "api.example.com", method: str = "GET", body: bytes = b"",
) -> Decision:  # fmt: skip
    request = Request(method=method, path=path, host=host, headers=headers or {}, body=body)
    return asyncio.run(eng.check(request))


def test_defaults() -> None:
    assert "x-user-id" in DEFAULT_STRIP_HEADERS and "x-auth-*" in DEFAULT_STRIP_HEADERS


def test_client_identity_headers_are_removed_by_name() -> None:
    headers = {
        "x-user-id": "1",
        "x-remote-user": "root",
        "x-forwarded-user": "root",
        "x-user": "root",
        "x-auth-role": "admin",
        "x-authenticated-userid": "7",
        "x-authz-subject": "forged",  # authz's own: overwritten/removed as before
        "x-userx": "kept",
        "accept": "*/*",
    }
    d = decide(engine(), headers=headers)
    assert d.allowed
    removed = set(d.remove_upstream_headers)
    assert {
        "x-user-id", "x-remote-user", "x-forwarded-user", "x-user", "x-auth-role",
        "x-authenticated-userid",
    } <= removed  # fmt: skip
    assert "x-userx" not in removed and "accept" not in removed
    assert "x-authz-subject" in removed  # anonymous: every own identity header removed


def test_configured_list_replaces_the_defaults() -> None:
    eng = engine("hygiene: {strip_headers: [x-tenant, x-internal-*]}")
    d = decide(eng, headers={"x-tenant": "a", "x-internal-role": "b", "x-user-id": "1"})
    assert {"x-tenant", "x-internal-role"} <= set(d.remove_upstream_headers)
    assert "x-user-id" not in d.remove_upstream_headers


def test_a_pattern_with_an_inner_star_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="trailing"):
        engine("hygiene: {strip_headers: ['x-*-user']}")


@pytest.mark.parametrize("name", ["x-http-method-override", "x-http-method", "x-method-override"])
def test_method_override_header_is_refused(name: str) -> None:
    d = decide(engine(), headers={name: "DELETE"}, method="POST")
    assert (d.allowed, d.status, d.reason) == (False, 400, "method_override")


def test_method_override_header_removed_when_configured() -> None:
    d = decide(engine("hygiene: {method_override: remove}"), headers={"x-http-method": "DELETE"})
    assert d.allowed and "x-http-method" in d.remove_upstream_headers


@pytest.mark.parametrize(
    "query", ["_method=DELETE", "a=1&_method=PUT", "%5Fmethod=PUT", "_METHOD=put", "_method"]
)
def test_method_query_parameter_is_refused(query: str) -> None:
    for hygiene in ("", "hygiene: {method_override: remove}"):
        d = decide(engine(hygiene), path=f"/open?{query}")
        assert (d.status, d.reason) == (400, "method_override"), query


def test_queries_that_only_mention_method_pass() -> None:
    assert not has_method_parameter("method=GET&x_method=1&q=_method")
    assert decide(engine(), path="/open?method=GET").allowed


@pytest.mark.parametrize(
    "host", ["a.example.com,b.example.com", "user@api.example.com", "api.example.com evil"]
)
def test_ambiguous_host_is_refused(host: str) -> None:
    d = decide(engine(), host=host)
    assert (d.status, d.reason) == (400, "host_ambiguous")


def test_an_empty_host_the_request_carried_is_refused() -> None:
    for name in ("host", ":authority"):
        d = decide(engine(), host="", headers={name: ""})
        assert (d.status, d.reason) == (400, "host_ambiguous")


def test_plain_hosts_pass() -> None:
    for host in ("api.example.com", "api.example.com:8443", "[::1]:80", "127.0.0.1"):
        assert decide(engine(), host=host).allowed, host


def test_encoded_body_on_a_validated_route_is_415() -> None:
    json_headers = {"content-type": "application/json", "content-length": "2"}
    for encoding in ("gzip", "br", "identity, gzip", "x-custom"):
        d = decide(
            engine(), "/orders", {**json_headers, "content-encoding": encoding},
            method="POST", body=b"{}",
        )  # fmt: skip
        assert (d.status, d.reason) == (415, "content_encoding_unsupported"), encoding
    ok = decide(
        engine(), "/orders", {**json_headers, "content-encoding": "identity"},
        method="POST", body=b"{}",
    )  # fmt: skip
    assert ok.allowed
    # a route without a contract does not read the body: not refused there
    assert decide(engine(), "/open", {"content-encoding": "gzip"}, method="POST").allowed


def test_identity_encoding() -> None:
    assert identity_encoding("identity") and identity_encoding("Identity, identity")
    assert not identity_encoding("gzip") and not identity_encoding("identity, br")


def test_the_table_of_known_header_names_is_bounded() -> None:
    from authz.hygiene import MAX_KNOWN_NAMES, RequestHygiene

    eng = engine()
    stage = next(s for s in eng.policy.head if isinstance(s, RequestHygiene))
    for i in range(MAX_KNOWN_NAMES + 10):
        decide(eng, headers={f"x-h{i}": "1"})
    assert len(stage.kinds) <= MAX_KNOWN_NAMES
    assert "x-user-id" in decide(eng, headers={"x-user-id": "1"}).remove_upstream_headers
