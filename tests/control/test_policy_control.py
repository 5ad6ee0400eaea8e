"""Policy versions over the control plane of a running ``authz serve``: list them,
roll back to one and see decisions change at once, the poller leaves the rollback
alone until the file changes, ``reload`` undoes it, everything logged with who did
it; with ``--workers 2`` every worker rolls back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from authz.v1 import admin_pb2
from tests.control.test_control_server import admin, worker_sockets
from tests.control.test_enforcement_control import cli, status
from tests.support import ServiceProcess, free_port, grpc_serving, wait_for

KEY_DIGEST = "a" * 64
V1 = f"""\
providers:
  keys:
    type: api_key
    keys: [{{id: app, sha256: {KEY_DIGEST}, owner: shop, expires: "2999-01-01"}}]
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: reports, path: /reports, methods: [GET], public: true}}
"""
V2 = V1.replace("{name: reports, path: /reports, methods: [GET], public: true}",
                "{name: reports, path: /reports, methods: [GET], providers: [keys]}")  # fmt: skip
V3 = V1 + "  - {name: extra, path: /extra, methods: [GET], public: true}\n"


def replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def versions(run: Callable[..., subprocess.CompletedProcess[str]]) -> dict[str, object]:
    listed = run("policy", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)  # type: ignore[no-any-return]


def test_rollback_over_the_control_plane(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(V1)
    svc = start_service(policy, "--policy-history", "3")
    first_port = svc.port
    run = lambda *a: cli(svc.env, svc.control, *a)  # noqa: E731
    assert status(svc.address, "/reports") == 200
    v1 = versions(run)["versions"][0]["version"]  # type: ignore[index]

    replace(policy, V2)
    wait_for(lambda: status(svc.address, "/reports") == 401, timeout=20)
    listed = versions(run)
    v2 = listed["on_disk"]
    assert [(v["version"], v["origin"], v.get("active", False)) for v in listed["versions"]] == [
        (v2, "reload", True), (v1, "start", False),
    ]  # fmt: skip
    assert listed["capacity"] == 3 and listed["active"] == [v2]
    text = run("policy", "list").stdout
    assert text.startswith(f"2 kept (at most 3); the policy file holds {v2}")

    # roll back by a prefix: decisions change at once, and the answer says the file differs
    rolled = run("policy", "rollback", str(v1)[7:19])
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout.splitlines()[0] == f"rolled back: {v2} -> {v1}"
    assert f"warning: the policy file still holds {v2}: this process serves {v1}" in rolled.stdout
    assert "restore the file to this version to keep it" in rolled.stdout
    assert status(svc.address, "/reports") == 200
    time.sleep(1.5)  # several polls (0.2 s): the unchanged file is not loaded over it
    assert status(svc.address, "/reports") == 200
    listed = versions(run)
    top = listed["versions"][0]  # type: ignore[index]
    assert (top["version"], top["origin"], listed["on_disk"]) == (v1, "rollback", v2)
    assert re.fullmatch(r"token:[0-9a-f]{8}", top["by"])
    again = run("policy", "rollback", str(v1))
    assert again.returncode == 0 and again.stdout.startswith(f"{v1} is already active")

    missing = run("policy", "rollback", "deadbeef")
    assert missing.returncode == 1
    assert "NOT_FOUND: no kept policy version 'deadbeef'" in missing.stderr

    # reload: the file again, though unchanged
    reloaded = run("policy", "reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stdout.strip() == f"reloaded: {v1} -> {v2}"
    assert status(svc.address, "/reports") == 401

    # after another rollback, restoring the file keeps it: nothing swapped, no warning
    assert run("policy", "rollback", str(v1)).returncode == 0
    assert status(svc.address, "/reports") == 200
    replace(policy, V1)
    wait_for(lambda: versions(run)["on_disk"] == v1, timeout=20)
    kept = run("policy", "rollback", str(v1))
    assert kept.stdout.strip() == f"{v1} is already active", kept.stdout
    assert versions(run)["versions"][0]["origin"] == "rollback"  # type: ignore[index]
    # a change of the file is loaded (the file wins again)
    replace(policy, V2)
    wait_for(lambda: status(svc.address, "/reports") == 401, timeout=20)
    assert run("policy", "rollback", str(v1)).returncode == 0
    replace(policy, V3)
    wait_for(lambda: status(svc.address, "/extra") == 200, timeout=20)
    listed = versions(run)
    assert len(listed["versions"]) == 3  # type: ignore[arg-type]
    assert listed["versions"][0]["origin"] == "reload"  # type: ignore[index]

    # a reload of a file that does not load: refused, the version in use stays
    replace(policy, "routes: 3\n")
    refused = run("policy", "reload")
    assert refused.returncode == 3
    assert "FAILED_PRECONDITION: the policy file was not loaded" in refused.stderr
    assert status(svc.address, "/extra") == 200
    replace(policy, V3)
    # a restart loads the file, whatever was rolled back
    assert run("policy", "rollback", str(v1)).returncode == 0
    assert status(svc.address, "/extra") == 404
    svc.stop()
    svc = start_service(policy)
    assert status(svc.address, "/extra") == 200
    log = (tmp_path / f"serve-{first_port}.log").read_text()
    assert re.search(rf"policy rollback by token:[0-9a-f]{{8}}: {v2} -> {v1}", log)
    assert re.search(rf"policy reload by token:[0-9a-f]{{8}}: {v1} -> {v2}", log)
    assert re.search(rf"policy {v1} active \(was {v2}; rollback by token:[0-9a-f]{{8}}\)", log)
    assert re.search(r"control call /authz.v1.Admin/RollbackPolicy by token:[0-9a-f]{8}", log)
    assert re.search(r"policy rollback by token:[0-9a-f]{8} refused: no kept policy version", log)


def test_workers_every_worker_rolls_back(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(V1)
    grpc_port, control_port = free_port(), free_port()
    address, control = f"127.0.0.1:{grpc_port}", f"127.0.0.1:{control_port}"
    runtime = tmp_path / "run"
    env = {**os.environ, "AUTHZ_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "authz", "serve", str(policy), "--grpc", address,
             "--workers", "2", "--control", control, "--decision-log", "off",
             "--reload-interval", "0.2"],
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
                answer = admin(
                    control, "ListPolicies", admin_pb2.ListPoliciesRequest(), token=token
                )
                return answer.workers == 2  # type: ignore[no-any-return]
            except grpc.RpcError:
                return False

        wait_for(both_up, timeout=60)
        v1 = json.loads(cli(env, control, "policy", "list", "--json").stdout)["on_disk"]
        replace(policy, V2)

        def each_worker(version: str) -> bool:
            return all(
                admin("unix:" + s, "ListPolicies", admin_pb2.ListPoliciesRequest()).active
                == [version]
                for s in worker_sockets(proc.pid)
            )

        wait_for(lambda: not each_worker(v1), timeout=20)
        v2 = json.loads(cli(env, control, "policy", "list", "--json").stdout)["on_disk"]
        wait_for(lambda: each_worker(v2), timeout=20)
        rolled = cli(env, control, "policy", "rollback", v1)
        assert rolled.returncode == 0, rolled.stderr
        assert rolled.stdout.splitlines()[0] == f"rolled back: {v2} -> {v1} (2 workers)"
        assert each_worker(v1)
        for _ in range(20):  # a new connection each: both workers answer some
            assert status(address, "/reports") == 200
        text = log.read_text()
        assert len(re.findall(rf"policy rollback by token:[0-9a-f]{{8}}: {v2} -> {v1}", text)) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
