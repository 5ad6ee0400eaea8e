"""Explain: a request run stage by stage, with outcome, element and duration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from authz.audit.sink import MemorySink
from authz.engine import CompiledPolicy, PolicyEngine
from authz.explain import Step
from authz.model import Request
from authz.policy.loader import load_policy

SECRET_SHA = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"  # "secret"
POLICY = f"""\
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {{id: demo, sha256: {SECRET_SHA}, owner: svc-demo, expires: 2099-01-01,
          scopes: [orders:read]}}
rate_limits:
  rules:
    - {{name: per-key, key: [api_key], rate: 100/s}}
routes:
  - {{name: list-orders, path: /v1/orders, methods: [GET], providers: [keys],
      scopes: [orders:read]}}
  - {{name: admin, path: /v1/admin, methods: [GET], providers: [keys], scopes: [admin]}}
  - name: search
    path: /v1/search
    methods: [GET]
    public: true
    contract:
      parameters: [{{name: limit, in: query, schema: {{type: integer, maximum: 10}}}}]
"""
KEY = {"x-api-key": "secret"}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    return path


def engine(policy_file: Path, sink: MemorySink | None = None) -> PolicyEngine:
    return PolicyEngine(CompiledPolicy(load_policy(policy_file)), sink=sink)


def by_name(steps: tuple[Step, ...]) -> dict[tuple[str, str], Step]:
    return {(s.phase, s.name): s for s in steps}


async def test_an_allow_lists_every_stage_in_run_order(policy_file: Path) -> None:
    sink = MemorySink()
    eng = engine(policy_file, sink)
    request = Request(method="GET", path="/v1/orders", headers=KEY)
    decision, steps = await eng.explain(request)
    assert decision.allowed and decision.reason == "allowed"
    assert [(s.phase, s.name, s.outcome) for s in steps] == [
        ("canonical", "canonical_path", "pass"),
        ("request", "enforce_address", "abstain"),
        ("request", "hygiene", "pass"),
        ("request", "ratelimit", "abstain"),
        ("route", "route", "pass"),
        ("pre", "shed", "abstain"),
        ("pre", "ratelimit", "abstain"),
        ("pre", "content_encoding", "abstain"),
        ("identity", "identity", "pass"),
        ("authorize", "enforce_identity", "abstain"),
        ("authorize", "authorize", "pass"),
        ("post", "ratelimit", "pass"),
        ("post", "validation", "abstain"),
        ("observe", "inventory", "skipped"),
        ("observe", "detect", "skipped"),
    ]
    found = by_name(steps)
    assert found[("route", "route")].element == "list-orders"
    assert found[("identity", "identity")].element == "keys"
    assert found[("authorize", "authorize")].element == "scopes=orders:read"
    assert found[("post", "ratelimit")].element == "rate_limits: per-key"
    assert all(s.duration_ms > 0 for s in steps if s.outcome == "pass")
    assert all(s.duration_ms == 0 for s in steps if s.outcome != "pass")
    assert sink.records == []  # explain writes no decision record
    # and check decides the same
    assert (await eng.check(request)).reason == decision.reason


@pytest.mark.parametrize(
    ("path", "headers", "reason", "stage", "element"),
    [
        ("/v1/orders", {"x-api-key": "wrong"}, "api_key_unknown", ("identity", "identity"), "keys"),
        ("/v1/orders", {}, "missing_credential", ("identity", "identity"), ""),
        ("/v1/admin", KEY, "insufficient_scope", ("authorize", "authorize"), "scopes"),
        ("/v1/search?limit=50", {}, "parameter_invalid", ("post", "validation"), "query /limit"),
        ("/v1/%2e%2e/x", {}, "invalid_path", ("canonical", "canonical_path"), ""),
    ],
)
async def test_a_deny_names_its_stage_and_element_and_skips_the_rest(
    policy_file: Path,
    path: str,
    headers: dict[str, str],
    reason: str,
    stage: tuple[str, str],
    element: str,
) -> None:
    decision, steps = await engine(policy_file).explain(
        Request(method="GET", path=path, headers=headers)
    )
    assert not decision.allowed and decision.reason == reason
    denied = [s for s in steps if s.outcome == "deny"]
    assert [((s.phase, s.name), s.reason, s.element) for s in denied] == [(stage, reason, element)]
    after = steps[steps.index(denied[0]) + 1 :]
    assert all(s.outcome in ("skipped", "abstain") for s in after)


async def test_an_undeclared_path_skips_the_route_stages(policy_file: Path) -> None:
    decision, steps = await engine(policy_file).explain(Request(method="GET", path="/nope"))
    assert decision.reason == "undeclared_route"
    found = by_name(steps)
    assert found[("route", "route")].outcome == "deny"
    assert {found[k].outcome for k in [("identity", "identity"), ("post", "validation")]} == {
        "skipped"
    }


def run_cli(policy_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", "explain", str(policy_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_authz_explain_prints_an_allow_and_a_deny(policy_file: Path) -> None:
    allow = run_cli(policy_file, "http://api.local/v1/orders", "-H", "x-api-key: secret")
    assert allow.returncode == 0, allow.stderr
    lines = allow.stdout.splitlines()
    assert lines[0] == "ALLOW 200 allowed"
    identity = next(line for line in lines if line.split()[:2] == ["identity", "identity"])
    assert "pass" in identity.split() and identity.endswith("[keys]")
    assert "[list-orders]" in allow.stdout and "[keys]" in allow.stdout
    deny = run_cli(policy_file, "http://api.local/v1/admin", "-H", "x-api-key: secret", "--json")
    assert deny.returncode == 1, deny.stderr
    out = json.loads(deny.stdout)
    assert (out["decision"], out["status"], out["reason"]) == ("deny", 403, "insufficient_scope")
    [step] = [s for s in out["steps"] if s["outcome"] == "deny"]
    assert (step["name"], step["element"]) == ("authorize", "scopes")
