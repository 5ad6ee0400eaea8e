"""Blocks and revocations over the control plane of a running ``authz serve``: the CLI
adds, lists and lifts them with the service's token, the data plane enforces them at
once, every add and lift is logged with the caller, bad arguments exit 2 with the
reason, and ``--workers 2`` puts a change in every worker."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.transport.envoy_grpc import build_check_request
from authz.v1 import admin_pb2
from tests.control.test_control_server import admin, worker_sockets
from tests.support import ServiceProcess, free_port, grpc_serving, wait_for

KEY = "enforce-key-0123456789abcdef"
POLICY = f"""\
mode: enforce
providers:
  keys:
    type: api_key
    keys:
      - {{id: app, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, owner: shop, expires: "2999-01-01"}}
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true, rate_limits: [{{name: h, rate: 1000/s}}]}}
  - {{name: orders, path: /orders, methods: [GET], providers: [keys]}}
enforcement:
  block_ttl: 10m
"""


def status(address: str, path: str, *, source: str = "10.0.0.1", key: str = "") -> int:
    """The HTTP status Envoy would answer with (200 when allowed)."""
    with grpc.insecure_channel(address) as channel:
        request = build_check_request(
            method="GET", path=path, host="api.local", headers={"x-api-key": key} if key else {},
            body=b"", source_address=source,
        )  # fmt: skip
        reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
    return 200 if reply.status.code == 0 else int(reply.denied_response.status.code)


def cli(svc_env: dict[str, str], control: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", *argv, "--control", control],
        capture_output=True, text=True, env=svc_env, timeout=60,
    )  # fmt: skip


def test_blocks_and_revocations_through_the_cli(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    svc = start_service(policy)
    run = lambda *a: cli(svc.env, svc.control, *a)  # noqa: E731
    assert status(svc.address, "/nowhere", source="203.0.113.7") == 404
    added = run("blocks", "add", "--address", "203.0.113.7", "--note", "prober")
    assert added.returncode == 0, added.stderr
    assert re.match(r"block address 203\.0\.113\.7 until \S+ \((10m00|9m5\d)s\), by token:[0-9a-f]{8}",
                    added.stdout)  # fmt: skip
    for path in ("/nowhere", "/healthz", "/orders"):
        assert status(svc.address, path, source="203.0.113.7") == 403
    assert status(svc.address, "/healthz", source="203.0.113.8") == 200
    listed = run("blocks", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)["enforcements"]
    assert (entry["response"], entry["target_kind"], entry["target"], entry["source"],
            entry["note"]) == ("block", "address", "203.0.113.7", "operator", "prober")  # fmt: skip
    assert entry["by"].startswith("token:")
    text = run("blocks", "list").stdout
    assert "1 in force; store memory" in text and "operator token:" in text

    # a revocation of the API key: 401 before anything else about it
    assert status(svc.address, "/orders", key=KEY) == 200
    assert run("revoke", "add", "--api-key", "app", "--ttl", "1h").returncode == 0
    assert status(svc.address, "/orders", key=KEY) == 401
    assert "1 in force" in run("revoke", "list").stdout
    assert run("revoke", "lift", "--api-key", "app").returncode == 0
    assert status(svc.address, "/orders", key=KEY) == 200

    lifted = run("blocks", "lift", "--address", "203.0.113.7")
    assert lifted.returncode == 0 and lifted.stdout.startswith("lifted block address 203.0.113.7")
    assert status(svc.address, "/healthz", source="203.0.113.7") == 200
    again = run("blocks", "lift", "--address", "203.0.113.7")
    assert again.returncode == 1 and "nothing in force" in again.stdout

    # every add and lift logged with who did it; the token itself never
    log = svc.log()
    assert re.search(r"authz\.control.*enforcement added by token:[0-9a-f]{8}: block address "
                     r"203\.0\.113\.7 by operator token:[0-9a-f]{8}, 600s left \(prober\)", log)  # fmt: skip
    assert re.search(r"enforcement lifted by token:[0-9a-f]{8}: block address 203\.0\.113\.7", log)
    assert re.search(r"enforcement lifted by token:[0-9a-f]{8}: revoke api_key app", log)
    token = (svc.runtime / f"control-{svc.control.rsplit(':', 1)[1]}.token").read_text().strip()
    assert token not in log

    # bad arguments: the reason, exit 2, nothing sent
    bad = run("blocks", "add", "--prefix", "10.0.0.0/16")
    assert bad.returncode == 2
    assert "--prefix: '10.0.0.0/16': a prefix block is a /24 (IPv4) or /64 (IPv6)" in bad.stderr
    bad = run("blocks", "add", "--address", "10.0.0.300")
    assert bad.returncode == 2 and "not an IP address: '10.0.0.300'" in bad.stderr
    bad = run("revoke", "add", "--token", "not-a-jwt")
    assert bad.returncode == 2 and "--token: not a JWT" in bad.stderr
    bad = run("blocks", "add", "--subject", "x", "--ttl", "forever")
    assert bad.returncode == 2 and "argument --ttl: expected a duration" in bad.stderr
    bad = run("blocks", "add", "--subject", "x", "--address", "10.0.0.1")
    assert bad.returncode == 2 and "not allowed with argument" in bad.stderr
    # a bad request reaching the service: INVALID_ARGUMENT
    answer = grpc.RpcError
    try:
        admin(svc.control, "AddEnforcement",
              admin_pb2.AddEnforcementRequest(response="revoke", target_kind="address",
                                              target="10.0.0.1"), token=token)  # fmt: skip
    except grpc.RpcError as exc:
        answer = exc.code()  # type: ignore[assignment]
    assert answer == grpc.StatusCode.INVALID_ARGUMENT

    actions = run("actions")
    assert actions.returncode == 0 and actions.stdout.startswith("0 recent actions")


def test_a_policy_without_enforcement(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.split("enforcement:")[0])
    svc = start_service(policy)
    run = cli(svc.env, svc.control, "blocks", "list")
    assert run.returncode == 3
    assert "FAILED_PRECONDITION: this service's policy has no enforcement:" in run.stderr


def test_workers_every_worker_gets_the_change(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    grpc_port, control_port = free_port(), free_port()
    address, control = f"127.0.0.1:{grpc_port}", f"127.0.0.1:{control_port}"
    runtime = tmp_path / "run"
    env = {**os.environ, "AUTHZ_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "authz", "serve", str(policy), "--grpc", address,
             "--workers", "2", "--control", control, "--decision-log", "off"],
            stdout=subprocess.DEVNULL, stderr=fh, env=env,
        )  # fmt: skip
    try:

        def serving() -> bool:
            try:
                return grpc_serving(address)
            except grpc.RpcError:
                return False

        wait_for(serving, timeout=60)
        token = (runtime / f"control-{control_port}.token").read_text().strip()

        def both_up() -> bool:
            try:
                request = admin_pb2.ListEnforcementsRequest()
                return admin(control, "ListEnforcements", request, token=token).workers == 2
            except grpc.RpcError:
                return False

        wait_for(both_up, timeout=60)
        added = cli(env, control, "blocks", "add", "--prefix", "198.51.100.0/24")
        assert added.returncode == 0, added.stderr
        for socket in worker_sockets(proc.pid):
            [entry] = admin("unix:" + socket, "ListEnforcements",
                            admin_pb2.ListEnforcementsRequest()).enforcements  # fmt: skip
            assert entry.target == "198.51.100.0/24" and entry.by.startswith("token:")
        for i in range(20):  # a new connection each: both workers answer some
            assert status(address, "/healthz", source=f"198.51.100.{i}") == 403
        listed = json.loads(cli(env, control, "blocks", "list", "--json").stdout)
        assert listed["workers"] == 2 and len(listed["enforcements"]) == 1
        lifted = cli(env, control, "blocks", "lift", "--prefix", "198.51.100.0/24")
        assert lifted.returncode == 0, lifted.stderr
        assert status(address, "/healthz", source="198.51.100.1") == 200
        text = log.read_text()
        lines = re.findall(r"enforcement lifted by token:[0-9a-f]{8}: block prefix", text)
        assert len(lines) == 2  # each worker says who lifted it
    finally:
        proc.terminate()
        proc.wait(timeout=30)
