"""``authz replay``: traffic recorded by a real service, re-decided under a candidate
that adds a scope to a route (and declares a new one): the divergence report."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from authz.transport.envoy_grpc import build_check_request
from tests.audit.helpers import key_files
from tests.support import ServiceProcess, jwt_policy

AUDIT = "audit: {dir: trail, signing_key: audit.pem}\n"


def _check(address: str, method: str, path: str, token: str = "") -> None:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    headers = {"authorization": f"Bearer {token}"} if token else {}
    with grpc.insecure_channel(address) as channel:
        request = build_check_request(
            method=method, path=path, host="api.local", headers=headers, body=b"",
            request_id=f"{method}-{path}",
        )  # fmt: skip
        external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)


def replay(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", "replay", *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_scope_added_to_a_route(
    tmp_path: Path,
    issuer: object,
    mint: Callable[..., str],
    start_service: Callable[..., ServiceProcess],
) -> None:
    key_files(tmp_path)
    url = issuer.url  # type: ignore[attr-defined]
    current = tmp_path / "policy.yaml"
    current.write_text(AUDIT + jwt_policy(url))
    svc = start_service(current)
    reader = mint("alice", "orders:read")
    both = mint("bob", "orders:read orders:history")
    for _ in range(3):
        _check(svc.address, "GET", "/v1/orders/1", reader)
    _check(svc.address, "GET", "/v1/orders/2", both)
    _check(svc.address, "GET", "/v1/orders/3")  # 401 missing_credential
    _check(svc.address, "GET", "/v1/reports")  # 404 undeclared_route
    _check(svc.address, "POST", "/v1/orders", reader)  # 403 insufficient_scope
    assert svc.stop() == 0

    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        jwt_policy(url, "  - {name: reports, path: /v1/reports, methods: [GET], public: true}\n")
        .replace("scopes: [orders:read]", "scopes: [orders:read, orders:history]")
    )  # fmt: skip
    run = replay(str(tmp_path / "trail"), str(candidate))
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    assert "replayed 7 recorded decisions" in out and "3 same, 4 diverge" in out
    assert "allow -> deny: 3\n  route get-order  insufficient_scope  3\n" in out
    assert "    e.g. GET-/v1/orders/1 " in out
    assert "GET api.local/v1/orders/1 subject alice: 200 allowed -> 403 insufficient_scope" in out
    assert "deny -> allow: 1\n  route reports  undeclared_route  1\n" in out

    report = json.loads(replay(str(tmp_path / "trail"), str(candidate), "--json").stdout)
    assert (report["records"], report["same"], report["divergences"]) == (7, 3, 4)
    (group,) = report["allow_to_deny"]
    assert (group["route"], group["reason"], group["count"]) == (
        "get-order",
        "insufficient_scope",
        3,
    )
    assert {e["subject"] for e in group["examples"]} == {"alice"}  # bob holds both scopes

    same = replay(str(tmp_path / "trail"), str(current))  # the recording policy: no change
    assert same.returncode == 0, same.stdout
    assert "7 same, 0 diverge" in same.stdout


def test_bad_arguments(tmp_path: Path) -> None:
    run = replay(str(tmp_path / "none"), str(tmp_path / "p.yaml"))
    assert run.returncode == 2 and "not a directory" in run.stderr
    (tmp_path / "bad.yaml").write_text("routes: [{name: x}]\n")
    run = replay(str(tmp_path), str(tmp_path / "bad.yaml"))
    assert run.returncode == 2 and "bad.yaml:1:" in run.stderr and "Traceback" not in run.stderr
