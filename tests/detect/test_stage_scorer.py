"""The detect stage (one observation per decision, a full queue counted) and the
scorer's lifecycle (nothing runs before start; aclose stops it)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import textwrap
from pathlib import Path

from authz.detect.events import ACTION_SINK, Observation, credential_digest
from authz.detect.intake import observation_of
from authz.detect.scorer import SHARED_NAME, Scorer
from authz.detect.stage import Detect
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy
from authz.policy.ratelimit_config import RateLimitConfig
from authz.respond.enforcer import Enforcer
from authz.stages import Shared
from authz.telemetry.metrics import MemoryMetrics

KEY = "secret-key-1"
POLICY = f"""\
providers:
  keys:
    type: api_key
    keys:
      - {{id: k1, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, owner: team, scopes: [r], expires: "2999-01-01"}}
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys], scopes: [r]}}
detection:
  scorer: inline
  queue: 4
"""


def engine(tmp_path: Path, shared: Shared, text: str = POLICY) -> PolicyEngine:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return PolicyEngine(CompiledPolicy(load_policy(path), shared=shared))


def scorer_of(shared: Shared) -> Scorer:
    found = shared.get(SHARED_NAME, lambda: None)
    assert isinstance(found, Scorer)
    return found


async def test_one_observation_per_decision_allow_or_deny(tmp_path: Path) -> None:
    shared = Shared()
    e = engine(tmp_path, shared)
    scorer = scorer_of(shared)
    decisions = [
        await e.check(
            Request(
                "GET",
                "/v1/orders/42",
                source_address="10.0.0.1",
                headers={"x-api-key": KEY, "content-length": "12"},
            )
        ),
        await e.check(
            Request(
                "GET", "/v1/orders/43", source_address="10.0.0.2", headers={"x-api-key": "wrong"}
            )
        ),
        await e.check(Request("GET", "/nowhere", source_address="10.0.0.3")),
    ]
    assert all(type(item) is tuple and len(item) == 5 for item in scorer.queue)  # one tuple each
    queued = [observation_of(item) for item in scorer.queue]
    assert [o.decision_id for o in queued] == [d.decision_id for d in decisions]
    allowed, refused, undeclared = queued
    assert (allowed.route, allowed.shape, allowed.path, allowed.subject, allowed.credential) == (
        "get-order",
        "/v1/orders/{id}",
        "/v1/orders/42",
        "team",
        "k1",
    )
    assert (allowed.allowed, allowed.status, allowed.body_bytes) == (True, 200, 12)
    assert allowed.object_ids == ()  # derived in the background, not on the request path
    assert (refused.reason, refused.identity_kind, refused.subject) == (
        "api_key_unknown",
        "anonymous",
        "",
    )
    assert refused.credential == credential_digest("wrong")  # a digest, never the key
    assert (undeclared.route, undeclared.status, undeclared.client_address) == ("", 404, "10.0.0.3")
    scorer.drain()
    assert shared.metrics.value("authz_detect_observations_total", "request") == 3


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    shared = Shared()
    e = engine(tmp_path, shared)
    for _ in range(10):
        await e.check(Request("GET", "/healthz"))
    scorer = scorer_of(shared)
    assert len(scorer.queue) == 4  # the policy's bound
    assert shared.metrics.value("authz_detect_dropped_total") == 6


async def test_a_jwt_is_named_by_jti_or_by_its_header_and_payload() -> None:
    from authz.model import Identity

    class Load:  # what Detect reads of a Load
        class config:
            providers = ()
            detection = None
            rate_limits = RateLimitConfig()

    scorer = Scorer(MemoryMetrics())
    stage = Detect(scorer, Load())  # type: ignore[arg-type]
    payload = base64.urlsafe_b64encode(json.dumps({"sub": "bob"}).encode()).decode().rstrip("=")
    token = f"eyJhbGciOiJFUzI1NiJ9.{payload}.sig-one"
    bob = Identity("jwt", "bob", provider="idp", claims={"sub": "bob"})
    name = stage._digest(bob, {"authorization": f"Bearer {token}"})
    assert name == credential_digest(f"eyJhbGciOiJFUzI1NiJ9.{payload}")
    # cached per identity: the same verified token is not hashed again
    assert stage._digest(bob, {}) == name


async def test_the_detector_and_the_enforcer_name_a_long_token_alike() -> None:
    # a token_sharing revoke on a JWT without jti must match the enforcer's check of it,
    # however long the token (the detector once cut it at 4096 characters first)
    from authz.model import Identity
    from authz.respond.targets import request_token_id

    class Load:
        class config:
            providers = ()
            detection = None
            rate_limits = RateLimitConfig()

    stage = Detect(Scorer(MemoryMetrics()), Load())  # type: ignore[arg-type]
    claims = {"sub": "bob", "groups": ["g" * 40] * 200}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    token = f"eyJhbGciOiJFUzI1NiJ9.{payload}.sig"
    assert len(token) > 8000
    bob = Identity("jwt", "bob", provider="idp", claims={"sub": "bob"})
    headers = {"authorization": f"Bearer {token}"}
    named = stage._digest(bob, headers)
    assert named == request_token_id(bob, Request("GET", "/", headers=headers), "authorization")
    assert named == credential_digest(f"eyJhbGciOiJFUzI1NiJ9.{payload}")


async def test_no_task_before_start_and_aclose_stops_it(tmp_path: Path) -> None:
    shared = Shared()
    e = engine(tmp_path, shared)
    scorer = scorer_of(shared)
    before = {t.get_name() for t in asyncio.all_tasks()}
    assert "authz.detect" not in before and not scorer.running
    await shared.runtimes.start()
    assert scorer.running
    await e.check(Request("GET", "/healthz", source_address="10.0.0.9"))
    for _ in range(50):  # drained in the background within a few intervals
        if not scorer.queue:
            break
        await asyncio.sleep(0.05)
    assert not scorer.queue
    await shared.runtimes.aclose()
    assert not scorer.running
    assert "authz.detect" not in {t.get_name() for t in asyncio.all_tasks()}


async def test_actions_go_to_the_sink_registered_when_acting(tmp_path: Path) -> None:
    shared = Shared()
    engine(tmp_path, shared, POLICY + "  detectors: {honeypot: {paths: [/.env]}}\n")
    scorer = scorer_of(shared)
    # the build registered the enforcer (the policy has a detection: section); the
    # scorer looks it up only when it acts
    enforcer = shared._objects[ACTION_SINK]
    assert isinstance(enforcer, Enforcer)
    scorer.offer(
        Observation(
            1.0,
            "d",
            "",
            "GET",
            "",
            "/.env",
            "10.0.0.5",
            "anonymous",
            "",
            "",
            (),
            False,
            404,
            "undeclared_route",
            0,
        )
    )
    scorer.drain()
    [record] = enforcer.actions()
    assert record.action.detector == "honeypot"
    assert record.action.monitor  # the section's default mode is monitor
    assert record.outcome == "monitor"  # listed, not enforced
    assert [e.monitor for e in enforcer.entries()] == [True]  # kept, never enforced


async def test_a_reload_without_detection_stops_scoring(tmp_path: Path) -> None:
    from authz.detect.events import RESPONSE_HUB, ResponseHub

    shared = Shared()
    engine(tmp_path, shared)
    scorer = scorer_of(shared)
    hub = shared.get(RESPONSE_HUB, ResponseHub)
    assert len(hub) == 1
    e = engine(tmp_path, shared, POLICY.split("detection:")[0])
    assert scorer.config is None and scorer.detectors == () and len(hub) == 0
    await e.check(Request("GET", "/healthz"))
    assert not scorer.queue  # no stage, nothing queued
    engine(tmp_path, shared)  # and back
    assert scorer.config is not None and len(hub) == 1


async def test_a_reload_section_applies_once_its_policy_serves(tmp_path: Path) -> None:
    shared = Shared()
    serving = engine(tmp_path, shared)
    scorer = scorer_of(shared)
    assert scorer.config is not None and scorer.config.mode == "monitor"
    # a reload is built (say its providers then never get ready: it is rejected)
    rejected = engine(
        tmp_path, shared, POLICY.replace("detection:\n", "detection:\n  mode: enforce\n")
    )
    assert scorer.config.mode == "monitor"  # not yet
    await serving.check(Request("GET", "/healthz"))
    scorer.drain()
    assert scorer.config.mode == "monitor"  # the serving policy's section still
    await rejected.check(Request("GET", "/healthz"))  # had it been swapped in
    scorer.drain()
    assert scorer.config.mode == "enforce"
