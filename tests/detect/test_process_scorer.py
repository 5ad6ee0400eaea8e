"""The process scorer: the detectors score in a child process; actions come back and
are applied by the serving process's enforcer, as the inline scorer's are."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import textwrap
from pathlib import Path

from authz.detect.events import ACTION_SINK, Observation, ResponseObservation
from authz.detect.intake import pick
from authz.detect.remote import ProcessScorer, decode_items, encode_items
from authz.detect.scorer import SHARED_NAME
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy
from authz.record import DecisionRecord
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
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys], scopes: [r]}}
detection:
  mode: enforce
  interval: 50ms
  detectors:
    honeypot: {{response: block, target: address, ttl: 1h, paths: ["/.env"]}}
"""


def test_items_cross_as_plain_tuples_and_come_back_as_they_were() -> None:
    record = DecisionRecord(
        1.5, "r", "d", "get-order", "GET", "/v1/orders/7", "api_key", "team-a", "", "allow",
        200, "allowed", "v1", 0.1, "10.0.0.1",
    )  # fmt: skip
    response = ResponseObservation(2.0, "d", "get-order", "GET", "/v1/orders/7", "10.0.0.1",
                                   404, 12, 3.0, 2.0, "", True)  # fmt: skip
    observation = Observation(
        3.0, "", "", "GET", "/x/{n}", "/x/1", "10.0.0.2", "anonymous", "", "", ("1",), True,
        200, "", 0,
    )  # fmt: skip
    items = [(pick(record), "/v1/orders/{id}", "a", 12, 3), response, observation]
    back = decode_items(encode_items(items))
    assert back == items
    assert type(back[1]) is ResponseObservation and type(back[2]) is Observation
    # the serving process's section numbers map onto the child's (unknown: 0)
    mapped = decode_items(encode_items(items[:1] * 2), {3: 7})
    assert [m[4] for m in mapped] == [7, 7]
    assert decode_items(encode_items(items[:1]), {})[0][4] == 0


def test_what_the_stage_queues_keeps_nothing_the_record_refers_to() -> None:
    # the request (its credentials) and the verified identity stay behind: the
    # queued fields are strings and numbers, which marshal carries as they are
    record = DecisionRecord(
        1.5, "r", "d", "get-order", "GET", "/v1/orders/7", "api_key", "team-a", "iss", "deny",
        403, "insufficient_scope", "v1", 0.1, "10.0.0.1", request=object(), identity=object(),
        data_class="pii",
    )  # fmt: skip
    fields = pick(record)
    assert all(type(v) in (str, int, float) for v in fields)
    assert fields == (1.5, "d", "get-order", "GET", "/v1/orders/7", "api_key", "team-a",
                      "deny", 403, "insufficient_scope", "10.0.0.1")  # fmt: skip
    (back,) = decode_items(encode_items([(fields, "", "", 0, 1)]))
    assert back == (fields, "", "", 0, 1)


async def _until(condition: object, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_honeypot_hit_scored_in_the_child_blocks_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    shared = Shared()
    engine = PolicyEngine(CompiledPolicy(load_policy(path), shared=shared))
    scorer = shared.get(SHARED_NAME, lambda: None)
    assert isinstance(scorer, ProcessScorer)  # the default
    enforcer = shared.get(ACTION_SINK, lambda: None)
    assert isinstance(enforcer, Enforcer)
    await shared.runtimes.start()
    pid = scorer.child_pid
    assert pid is not None and pid != os.getpid()
    try:
        hit = Request("GET", "/.env", source_address="10.1.2.3", headers={"x-api-key": KEY})
        assert (await engine.check(hit)).status == 404
        await _until(lambda: len(enforcer.actions()) == 2)
        assert {(r.action.detector, r.action.target_kind) for r in enforcer.actions()} == {
            ("honeypot", "address"),
            ("honeypot", "token"),  # the hit carried a key: its identity is marked too
        }
        later = Request(
            "GET", "/v1/orders/1", source_address="10.1.2.3", headers={"x-api-key": KEY}
        )
        assert (await engine.check(later)).reason == "caller_blocked"
        # the child's counters reach this process's metrics
        await _until(
            lambda: shared.metrics.value("authz_detect_observations_total", "request") >= 2
        )
        assert (
            shared.metrics.value("authz_detect_actions_total", "honeypot", "block", "enforce") == 2
        )

        # a child that dies is restarted and given the section again; what was queued
        # meanwhile waits for it (in the bounded queue) and is scored then
        os.kill(pid, signal.SIGKILL)
        await _until(lambda: scorer.child_pid is None)
        await engine.check(Request("GET", "/.env", source_address="10.7.7.7"))
        await _until(lambda: scorer.child_pid not in (None, pid), seconds=15)
        assert scorer.restarts == 1
        await _until(lambda: len(enforcer.actions()) == 3)
        assert enforcer.actions()[0].action.target == "10.7.7.7"
        # a Ctrl-C to the process group is not for the child: it stops with the service
        new_pid = scorer.child_pid
        assert new_pid is not None
        os.kill(new_pid, signal.SIGINT)
        await asyncio.sleep(0.3)
        assert _alive(new_pid)
    finally:
        await shared.runtimes.aclose()
    assert scorer.child_pid is None
    await _until(lambda: not _alive(new_pid))


async def test_queued_items_are_scored_before_the_child_stops(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY.replace("interval: 50ms", "interval: 1h")))
    shared = Shared()
    engine = PolicyEngine(CompiledPolicy(load_policy(path), shared=shared))
    enforcer = shared.get(ACTION_SINK, lambda: None)
    assert isinstance(enforcer, Enforcer)
    await shared.runtimes.start()
    await engine.check(Request("GET", "/.env", source_address="10.4.4.4"))
    assert not enforcer.actions()  # nothing drained yet (an hour's interval)
    await shared.runtimes.aclose()
    assert [r.action.target for r in enforcer.actions()] == ["10.4.4.4"]
