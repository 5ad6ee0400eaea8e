"""The enforcement calls in process, on a real control-plane server: a detector's
action listed with its evidence (and rendered as ``authz actions`` prints it), an
operator's entry listed with who added it, and explain over the control plane naming
the action that denies."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from authz.control.enforcement_commands import render_actions, render_enforcements
from authz.control.options import ControlOptions
from authz.control.server import ControlServer
from authz.control.servicer import AdminServicer
from authz.detect.events import Action
from authz.engine import CompiledPolicy, PolicyEngine
from authz.policy.loader import load_policy
from authz.respond.stage import find_enforcer
from authz.stages import Shared
from authz.v1 import admin_pb2, admin_pb2_grpc

POLICY = """\
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
enforcement: {}
"""
TOKEN = "t0ken-" + "y" * 40


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Any]:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    shared = Shared()
    policy = CompiledPolicy(load_policy(path), shared=shared)
    await policy.start()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    server = ControlServer(
        ControlOptions(address="127.0.0.1:0", token_file=str(token)),
        AdminServicer(PolicyEngine(policy)),
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
    enforcer = find_enforcer(shared)

    async def call(method: str, request: Any) -> Any:
        return await getattr(stub, method)(
            request, timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),)
        )

    try:
        yield call, enforcer
    finally:
        await channel.close()
        await server.aclose()
        await policy.close()


async def test_actions_with_their_evidence(served: Any) -> None:
    call, enforcer = served
    action = Action(time.time(), "honeypot", "block", "address", "203.0.113.9", 3600.0,
                    "caller_blocked", {"path": "/.env", "hits": 1.0})  # fmt: skip
    enforcer.apply(action)
    enforcer.apply(action._replace(detector="data_volume", response="log", evidence={"bytes": 9e6}))
    answer = await call("ListActions", admin_pb2.ListActionsRequest())
    assert [(a.detector, a.response, a.outcome) for a in answer.actions] == [
        ("data_volume", "log", "logged"), ("honeypot", "block", "enforced"),
    ]  # fmt: skip
    assert dict(answer.actions[1].evidence) == {"path": "/.env", "hits": "1.0"}
    text = render_actions(answer)
    assert text.splitlines()[0] == "2 recent actions"
    row = text.splitlines()[-1].split()
    assert row[1:] == ["honeypot", "block", "address", "203.0.113.9", "3600s", "enforced",
                       "hits=1.0,", "path=/.env"]  # fmt: skip
    only = await call("ListActions", admin_pb2.ListActionsRequest(detector="honeypot", limit=5))
    assert [a.detector for a in only.actions] == ["honeypot"]
    listed = await call("ListEnforcements", admin_pb2.ListEnforcementsRequest())
    [entry] = listed.enforcements
    assert (entry.source, entry.by, dict(entry.evidence)) == (
        "detector", "honeypot", {"path": "/.env", "hits": "1.0"},
    )  # fmt: skip
    assert "  block 203.0.113.9: hits=1.0, path=/.env" in render_enforcements(listed)


async def test_explain_over_the_control_plane_names_the_action(served: Any) -> None:
    call, _ = served
    added = await call("AddEnforcement", admin_pb2.AddEnforcementRequest(
        response="block", target_kind="prefix", target="198.51.100.7/24", ttl_seconds=120,
    ))  # fmt: skip
    assert added.target == "198.51.100.0/24" and added.by.startswith("token:")
    explained = await call("Explain", admin_pb2.ExplainRequest(
        url="http://api.local/nowhere", source_address="198.51.100.42",
    ))  # fmt: skip
    assert (explained.status, explained.reason) == (403, "caller_blocked")
    step = next(s for s in explained.steps if s.name == "enforce_address")
    assert step.outcome == "deny"
    assert step.element.startswith(f"block prefix 198.51.100.0/24 by operator {added.by}, ")
    lifted = await call("LiftEnforcement", admin_pb2.LiftEnforcementRequest(
        response="block", target_kind="prefix", target="198.51.100.0/24",
    ))  # fmt: skip
    assert lifted.lifted and lifted.enforcement.target == "198.51.100.0/24"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call("LiftEnforcement", admin_pb2.LiftEnforcementRequest(
            response="block", target_kind="prefix", target="198.51.0.0/16",
        ))  # fmt: skip
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a prefix block is a /24" in (caught.value.details() or "")
