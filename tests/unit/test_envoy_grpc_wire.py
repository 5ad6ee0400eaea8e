"""The gRPC server answers with bytes from encode_check_response; they must parse to
exactly the CheckResponse that to_check_response builds, for every decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from authz.model import Decision, Identity
from authz.transport.envoy_grpc import (
    CheckResponse,
    build_check_request,
    encode_check_response,
    to_check_response,
    to_request,
)
from tests.unit.test_engine_golden import CASES, make_engine


def _same(decision: Decision) -> None:
    expected = to_check_response(decision)
    got = CheckResponse.FromString(encode_check_response(decision))
    assert got == expected
    assert got.HasField("status") == expected.HasField("status")
    assert got.HasField("ok_response") == expected.HasField("ok_response")
    assert got.HasField("denied_response") == expected.HasField("denied_response")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_every_golden_decision(tmp_path: Path, case: dict[str, Any]) -> None:
    engine, _ = make_engine(tmp_path)
    kw = {"host": "shop.example", "headers": {}, "request_id": "req-1", **case["request"]}
    for _ in range(2):  # the second time from the caches
        _same(await engine.check(to_request(build_check_request(**kw))))


@pytest.mark.parametrize(
    "decision",
    [
        Decision(allowed=True, status=200, reason="allowed", decision_id="d"),
        Decision(
            allowed=True,
            status=200,
            reason="allowed",
            decision_id="d-1",
            identity=Identity(kind="jwt", subject="caf\u00e9"),
            upstream_headers=(("x-s", "caf\u00e9"), ("x-id", "d-1"), ("x-long", "v" * 300)),
            remove_upstream_headers=("authorization", "x-scopes"),
            response_headers=(("x-ratelimit-remaining", "0"),),
            metadata={"decision_id": "d-1", "subject": "", "reason": "allowed"},
        ),
        Decision(
            allowed=False,
            status=503,
            reason="jwks_unavailable",
            decision_id="d-2",
            response_headers=(("content-type", "application/json"), ("retry-after", "1")),
            body='{"error": "jwks_unavailable"}' + " " * 200,
            metadata={"decision_id": "d-2", "reason": "jwks_unavailable"},
        ),
        Decision(allowed=False, status=401, reason="missing_credential", decision_id="d-3"),
    ],
)
def test_edge_decisions(decision: Decision) -> None:
    _same(decision)
