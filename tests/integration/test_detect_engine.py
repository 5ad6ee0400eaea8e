"""Detection through the engine: a honeypot hit becomes an Action at ACTION_SINK (the
enforcer the build registered), and the block is enforced on the caller's next request."""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
from pathlib import Path

from authz.detect.events import (
    ACTION_SINK,
    RESPONSE_HUB,
    Action,
    ResponseHub,
    ResponseObservation,
    credential_digest,
)
from authz.detect.scorer import SHARED_NAME, Scorer
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy
from authz.respond.enforcer import Enforcer
from authz.stages import Shared

KEY = "key-of-team-a"
POLICY = f"""\
mode: enforce
providers:
  keys:
    type: api_key
    keys:
      - {{id: a, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, owner: team-a, scopes: [r], expires: "2999-01-01"}}
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys], scopes: [r]}}
detection:
  scorer: inline
  mode: enforce
  warmup: 60s
  detectors:
    honeypot: {{response: block, target: address, ttl: 1h, paths: ["/.env", "/wp-login.php", "/.git/**"]}}
"""


def _enforcer(shared: Shared) -> Enforcer:
    """The action sink the build registered (the policy has a detection: section)."""
    enforcer = shared.get(ACTION_SINK, lambda: None)
    assert isinstance(enforcer, Enforcer)
    return enforcer


def _actions(enforcer: Enforcer) -> list[Action]:
    return [record.action for record in reversed(enforcer.actions())]


def _engine(tmp_path: Path, shared: Shared) -> PolicyEngine:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return PolicyEngine(CompiledPolicy(load_policy(path), shared=shared))


async def test_a_honeypot_hit_reaches_the_registered_sink(tmp_path: Path) -> None:
    shared = Shared()
    engine = _engine(tmp_path, shared)
    scorer = shared.get(SHARED_NAME, lambda: None)
    assert isinstance(scorer, Scorer)
    assert scorer in shared.runtimes  # registered by the build ...
    assert not scorer.running  # ... and not started by it
    enforcer = _enforcer(shared)
    await shared.runtimes.start()
    try:
        await engine.check(
            Request("GET", "/v1/orders/7", source_address="10.1.2.3", headers={"x-api-key": KEY})
        )
        decision = await engine.check(
            Request("GET", "/.git/config", source_address="10.1.2.3", headers={"x-api-key": KEY})
        )
        assert decision.status == 404  # undeclared: the honeypot still sees it
        for _ in range(100):
            if len(enforcer.actions()) >= 2:
                break
            await asyncio.sleep(0.02)
        # enforced: the address is refused on its next request, before routing
        later = await engine.check(
            Request("GET", "/v1/orders/8", source_address="10.1.2.3", headers={"x-api-key": KEY})
        )
        assert (later.status, later.reason) == (403, "caller_blocked")
        other = await engine.check(
            Request("GET", "/v1/orders/8", source_address="10.1.2.4", headers={"x-api-key": KEY})
        )
        assert other.allowed
    finally:
        await shared.runtimes.aclose()
    assert not scorer.running
    by_kind = {a.target_kind: a for a in _actions(enforcer)}
    # the address, and the credential it carried (unverified on an undeclared path: its digest)
    assert set(by_kind) == {"address", "token"}
    block = by_kind["address"]
    assert (block.detector, block.response, block.target, block.reason) == (
        "honeypot",
        "block",
        "10.1.2.3",
        "caller_blocked",
    )
    assert block.ttl == 3600 and not block.monitor
    assert block.evidence["path"] == "/.git/config"
    assert by_kind["token"].target == credential_digest(KEY)  # never the key itself
    assert shared.metrics.value("authz_detect_actions_total", "honeypot", "block", "enforce") == 2


async def test_the_feed_reaches_the_detectors_and_public_routes_count(tmp_path: Path) -> None:
    shared = Shared()
    _engine(tmp_path, shared)
    enforcer = _enforcer(shared)
    hub = shared.get(RESPONSE_HUB, ResponseHub)
    assert len(hub) == 1  # the scorer subscribed once
    _engine(tmp_path, shared)  # a reload does not subscribe it twice
    assert len(hub) == 1
    scorer = shared.get(SHARED_NAME, lambda: None)
    assert isinstance(scorer, Scorer)
    # a public route Envoy answered without asking authz: decision id ""
    hub.publish(
        ResponseObservation(1.0, "", "", "GET", "/wp-login.php", "10.9.9.9", 404, 10, 1.0, 0.5)
    )
    scorer.drain()
    assert [(a.detector, a.target) for a in _actions(enforcer)] == [("honeypot", "10.9.9.9")]
    assert shared.metrics.value("authz_detect_observations_total", "request") == 1


async def test_behind_a_trusted_proxy_the_client_is_actioned_not_the_proxy(
    tmp_path: Path,
) -> None:
    shared = Shared()
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY) + "rate_limits:\n  trusted_hops: 1\n")
    engine = PolicyEngine(CompiledPolicy(load_policy(path), shared=shared))
    enforcer = _enforcer(shared)
    proxy = "10.0.0.1"  # the load balancer in front of Envoy: every request comes from it

    def via_proxy(client: str, target: str) -> Request:
        return Request(
            "GET",
            target,
            source_address=proxy,
            headers={"x-api-key": KEY, "x-forwarded-for": client},
        )

    await shared.runtimes.start()
    try:
        await engine.check(via_proxy("203.0.113.9", "/.env"))
        for _ in range(100):
            if enforcer.actions():
                break
            await asyncio.sleep(0.02)
        blocked = await engine.check(via_proxy("203.0.113.9", "/v1/orders/1"))
        assert (blocked.status, blocked.reason) == (403, "caller_blocked")
        assert (await engine.check(via_proxy("198.51.100.7", "/v1/orders/1"))).allowed
    finally:
        await shared.runtimes.aclose()
    targets = {a.target for a in _actions(enforcer) if a.target_kind == "address"}
    assert targets == {"203.0.113.9"}  # never the proxy's address
