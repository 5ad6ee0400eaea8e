"""The enforcement stages through the engine: each response's status, reason and
headers (the RFC 9470 step-up challenge to the byte), where in the pipeline it
holds (undeclared paths, before the scope check), explain naming the action, and
a policy without the section paying for nothing."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authz import devissuer
from authz.detect.events import ACTION_SINK, Action
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Decision, Request
from authz.policy.loader import load_policy
from authz.respond.enforcer import Enforcer
from authz.respond.stage import find_enforcer
from authz.respond.targets import token_id
from authz.stages import Shared

ISSUER = "https://corp.example"
KEY = devissuer.generate_key("ES256")
API_KEY = "reader-key-0123456789abcdef"
SHA = hashlib.sha256(API_KEY.encode()).hexdigest()

POLICY = """\
realm: shop
providers:
  corp: {{type: jwt, issuer: "{issuer}", audiences: [shop], algorithms: [ES256], jwks_file: {jwks}}}
  keys:
    type: api_key
    keys:
      - {{id: reader, sha256: {sha}, owner: reporting-team, scopes: [orders:read], expires: "2999-01-01"}}
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: orders, path: /orders, methods: [GET], providers: [corp, keys], scopes: [orders:read]}}
{enforcement}
"""
ENFORCEMENT = """\
enforcement:
  step_up: {acr_values: ["urn:example:mfa", "urn:example:hwk"], max_age: 300s}
  throttle: {requests: 2, per: 60s}
"""
STEP_UP = (
    'Bearer realm="shop", error="insufficient_user_authentication", '
    'error_description="A different authentication level is required", '
    'acr_values="urn:example:mfa urn:example:hwk", max_age=300'
)


def mint(subject: str = "alice", scopes: str = "orders:read", **claims: Any) -> str:
    return devissuer.mint(
        KEY, issuer=ISSUER, subject=subject, audience="shop", scopes=scopes, extra_claims=claims
    )


def write(tmp_path: Path, enforcement: str = ENFORCEMENT) -> Path:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(devissuer.jwks([KEY])))
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(issuer=ISSUER, jwks=jwks, sha=SHA, enforcement=enforcement))
    return path


Build = Callable[..., Any]


@pytest.fixture
async def build(tmp_path: Path) -> Any:
    made: list[CompiledPolicy] = []

    async def _build(enforcement: str = ENFORCEMENT) -> tuple[PolicyEngine, Enforcer]:
        shared = Shared()
        policy = CompiledPolicy(load_policy(write(tmp_path, enforcement)), shared=shared)
        await policy.start()
        made.append(policy)
        enforcer = find_enforcer(shared)
        assert enforcer is not None
        return PolicyEngine(policy), enforcer

    yield _build
    for policy in made:
        await policy.close()


def req(path: str = "/orders", *, token: str = "", key: str = "", source: str = "10.1.2.3",
        headers: dict[str, str] | None = None) -> Request:  # fmt: skip
    h = dict(headers or {})
    if token:
        h["authorization"] = f"Bearer {token}"
    if key:
        h["x-api-key"] = key
    return Request(method="GET", path=path, host="api.local", headers=h, source_address=source)


def header(decision: Decision, name: str) -> str:
    return ", ".join(v for k, v in decision.response_headers if k == name)


async def test_address_and_prefix_blocks_hold_on_undeclared_paths(build: Build) -> None:
    engine, enforcer = await build()
    assert (await engine.check(req("/nowhere"))).reason == "undeclared_route"
    enforcer.add("block", "address", "10.1.2.3", 60, by="op")
    for path in ("/nowhere", "/healthz", "/orders"):
        d = await engine.check(req(path))
        assert (d.status, d.reason) == (403, "caller_blocked")
        assert json.loads(d.body) == {"error": "caller_blocked", "request_id": ""}
    assert (await engine.check(req("/healthz", source="10.1.2.4"))).allowed
    enforcer.add("block", "prefix", "10.1.2.0/24", 60, by="op")
    assert (await engine.check(req("/healthz", source="10.1.2.4"))).reason == "caller_blocked"
    assert (await engine.check(req("/healthz", source="10.1.3.4"))).allowed
    enforcer.add("block", "prefix", "2001:db8:1:2::/64", 60, by="op")
    d = await engine.check(req("/healthz", source="2001:db8:1:2:dead:beef::1"))
    assert d.reason == "caller_blocked"
    assert (await engine.check(req("/healthz", source="2001:db8:1:3::1"))).allowed
    assert (
        await engine.check(req("/healthz", source="::ffff:10.1.2.9"))
    ).reason == "caller_blocked"


async def test_revoked_token_is_401_before_the_scope_check(build: Build) -> None:
    engine, enforcer = await build()
    unscoped = mint(scopes="other")
    assert (await engine.check(req(token=unscoped))).reason == "insufficient_scope"
    enforcer.add("revoke", "token", token_id(unscoped), by="op")
    d = await engine.check(req(token=unscoped))
    assert (d.status, d.reason) == (401, "credential_revoked")
    assert header(d, "www-authenticate") == 'Bearer realm="shop", error="invalid_token"'
    # another token of the same subject still works; revoking the subject ends it
    other = mint()
    assert (await engine.check(req(token=other))).allowed
    enforcer.add("revoke", "subject", "alice", by="op")
    assert (await engine.check(req(token=other))).reason == "credential_revoked"


async def test_token_without_jti_is_named_by_its_digest(build: Build) -> None:
    engine, enforcer = await build()
    token = mint(jti=None)
    enforcer.add("revoke", "token", token_id(token), by="op")
    assert (await engine.check(req(token=token))).reason == "credential_revoked"
    assert (await engine.check(req(token=mint(jti=None, sub="bob")))).allowed


async def test_api_key_by_id_or_digest(build: Build) -> None:
    engine, enforcer = await build()
    assert (await engine.check(req(key=API_KEY))).allowed
    enforcer.add("block", "api_key", "reader", by="op")
    assert (await engine.check(req(key=API_KEY))).reason == "caller_blocked"
    enforcer.lift("block", "api_key", "reader")
    assert (await engine.check(req(key=API_KEY))).allowed
    enforcer.add("revoke", "api_key", SHA[:16], by="op")  # credential_digest of the key
    assert (await engine.check(req(key=API_KEY))).reason == "credential_revoked"


async def test_step_up_challenge_and_what_satisfies_it(build: Build) -> None:
    engine, enforcer = await build()
    enforcer.add("step_up", "subject", "alice", by="op")
    d = await engine.check(req(token=mint()))
    assert (d.status, d.reason) == (401, "step_up_required")
    assert header(d, "www-authenticate") == STEP_UP
    now = int(time.time())
    fresh = mint(acr="urn:example:hwk", auth_time=now - 10)
    assert (await engine.check(req(token=fresh))).allowed
    stale = mint(acr="urn:example:mfa", auth_time=now - 301)
    assert (await engine.check(req(token=stale))).reason == "step_up_required"
    weak = mint(acr="urn:example:pwd", auth_time=now)
    assert (await engine.check(req(token=weak))).reason == "step_up_required"
    # a step-up on an address applies to the identities calling from it
    enforcer.lift("step_up", "subject", "alice")
    enforcer.add("step_up", "address", "10.1.2.3", by="op")
    assert (await engine.check(req(token=mint()))).reason == "step_up_required"
    assert (await engine.check(req(token=fresh))).allowed
    assert (await engine.check(req("/healthz"))).allowed  # public: no identity to step up


async def test_throttle_is_a_tighter_limit_with_retry_after(build: Build) -> None:
    engine, enforcer = await build()
    token = mint(subject="scraper")
    enforcer.add("throttle", "subject", "scraper", 600, by="op")
    got = [(await engine.check(req(token=token))).reason for _ in range(3)]
    assert got == ["allowed", "allowed", "caller_throttled"]
    d = await engine.check(req(token=token))
    assert d.status == 429 and int(header(d, "retry-after")) >= 1
    assert (await engine.check(req(token=mint()))).allowed  # only that caller
    enforcer.add("throttle", "address", "10.9.9.9", 600, by="op")
    got = [(await engine.check(req("/nowhere", source="10.9.9.9"))).reason for _ in range(3)]
    assert got == ["undeclared_route", "undeclared_route", "caller_throttled"]


async def test_explain_names_the_action(build: Build) -> None:
    engine, enforcer = await build()
    action = Action(time.time(), "honeypot", "block", "address", "10.1.2.3", 900.0,
                    "caller_blocked", {"path": "/.env"})  # fmt: skip
    enforcer.apply(action)
    decision, steps = await engine.explain(req("/orders"))
    assert decision.reason == "caller_blocked"
    step = next(s for s in steps if s.name == "enforce_address")
    assert (step.phase, step.outcome, step.reason) == ("request", "deny", "caller_blocked")
    assert step.element.startswith("block address 10.1.2.3 by detector honeypot, ")
    assert step.element.endswith("s left")
    token = mint(subject="bob")
    enforcer.add("revoke", "subject", "bob", 120, by="token:1234abcd")
    _, steps = await engine.explain(req(token=token, source="10.7.7.7"))
    step = next(s for s in steps if s.name == "enforce_identity")
    assert (step.phase, step.outcome) == ("authorize", "deny")
    assert step.element == "revoke subject bob by operator token:1234abcd, 120s left"
    names = [s.name for s in steps]
    assert names.index("enforce_identity") < names.index("authorize")
    assert names.index("enforce_address") < names.index("route")


async def test_explain_gives_back_the_throttle_charge(build: Build) -> None:
    engine, enforcer = await build()
    enforcer.add("throttle", "subject", "alice", by="op")
    token = mint()
    for _ in range(5):
        assert (await engine.explain(req(token=token)))[0].allowed
    assert (await engine.check(req(token=token))).allowed


async def test_monitor_actions_are_not_enforced(build: Build) -> None:
    engine, enforcer = await build()
    action = Action(time.time(), "token_sharing", "revoke", "subject", "alice", 900.0,
                    "credential_revoked", {"addresses": 9.0}, monitor=True)  # fmt: skip
    enforcer.apply(action)
    assert (await engine.check(req(token=mint()))).allowed
    assert [e.monitor for e in enforcer.entries()] == [True]


async def test_the_enforcer_is_the_action_sink_and_survives_reloads(tmp_path: Path) -> None:
    shared = Shared()
    one = CompiledPolicy(load_policy(write(tmp_path)), shared=shared)
    enforcer = shared.get(ACTION_SINK, lambda: None)
    assert isinstance(enforcer, Enforcer) and enforcer in shared.runtimes
    two = CompiledPolicy(load_policy(write(tmp_path, ENFORCEMENT + "  max_entries: 7\n")),
                         shared=shared)  # fmt: skip
    assert find_enforcer(shared) is enforcer and enforcer.table.max_entries == 7
    await one.close()
    await two.close()


async def test_without_the_section_no_stage_no_enforcer(tmp_path: Path) -> None:
    shared = Shared()
    policy = CompiledPolicy(load_policy(write(tmp_path, "")), shared=shared)
    names = {s.name for s in policy.head} | {
        s.name for plan in policy.plans.values() for s in plan.stages
    }
    assert not names & {"enforce_address", "enforce_identity"}
    assert find_enforcer(shared) is None


async def test_nothing_in_force_costs_one_attribute_read(build: Build) -> None:
    engine, enforcer = await build()
    stage = next(s for s in engine.policy.head if s.name == "enforce_address")
    assert not enforcer.request_active and stage.step(None) is None  # type: ignore[arg-type]
    plan = engine.policy.plans["orders"]
    ident = next(s for s in plan.stages if s.name == "enforce_identity")
    assert not enforcer.identity_active and ident.step(None) is None  # type: ignore[arg-type]
