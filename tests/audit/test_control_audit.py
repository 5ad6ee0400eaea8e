"""Every control-plane call and every reload is an audit record naming its caller, in
one process and through the supervisor of ``--workers 2``."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authz.audit.verify import verify_dir
from authz.v1 import admin_pb2
from tests.audit.helpers import key_files
from tests.control.test_control_server import TOKEN, admin, check
from tests.support import ServiceProcess, wait_for

POLICY = """\
audit: {dir: trail, signing_key: audit.pem, checkpoint: {records: 5, interval: 100ms}}
enforcement: {}
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
"""


def entries(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.iterdir()):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    key_files(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    token = tmp_path / "control.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return policy, token


def _calls(svc: ServiceProcess, control: str) -> None:
    check(svc.address, "/healthz")
    explain = admin_pb2.ExplainRequest(
        method="GET", url="http://api.local/healthz?access_token=SECRET",
        headers=[admin_pb2.Header(name="authorization", value="Bearer SECRET")],
    )  # fmt: skip
    assert admin(control, "Explain", explain, token=TOKEN).allowed
    added = admin_pb2.AddEnforcementRequest(
        response="block", target_kind="address", target="10.9.9.9", ttl_seconds=60
    )
    admin(control, "AddEnforcement", added, token=TOKEN)
    lift = admin_pb2.LiftEnforcementRequest(
        response="block", target_kind="address", target="10.9.9.9"
    )
    admin(control, "LiftEnforcement", lift, token=TOKEN)


def test_control_calls_and_reloads_are_audited(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy, token = _setup(tmp_path)
    svc = start_service(policy, "--control-token-file", str(token))
    _calls(svc, svc.control)
    policy.write_text(POLICY + "  - {name: new, path: /new, methods: [GET], public: true}\n")
    wait_for(lambda: "active (was" in svc.log())
    os.kill(svc.proc.pid, signal.SIGHUP)  # the same content: applied, unchanged
    wait_for(lambda: sum(e.get("method") == "reload" for e in entries(tmp_path / "trail")) == 2)
    assert svc.stop() == 0
    report = verify_dir(tmp_path / "trail")
    assert report.problems == [] and report.chains == 1
    control = [e for e in entries(tmp_path / "trail") if e["kind"] == "control"]
    methods = [(e["method"].rsplit("/", 1)[-1], e["outcome"]) for e in control]
    assert methods[:3] == [("Explain", "OK"), ("AddEnforcement", "OK"), ("LiftEnforcement", "OK")]
    assert all(e["caller"].startswith("token:") for e in control[:3])
    assert control[0]["detail"]["url"] == "http://api.local/healthz?access_token=[redacted]"
    assert control[0]["detail"]["headers"] == ["authorization"]
    assert control[1]["detail"]["target"] == "10.9.9.9"
    reloads = [e for e in control if e["method"] == "reload"]
    assert [(e["caller"], e["outcome"], e["detail"]["changed"]) for e in reloads] == [
        ("policy file change", "applied", True),
        ("SIGHUP", "applied", False),
    ]
    assert "SECRET" not in json.dumps(entries(tmp_path / "trail"))


@pytest.mark.e2e
def test_workers_audit_the_supervisors_caller(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy, token = _setup(tmp_path)
    svc = start_service(policy, "--control-token-file", str(token), "--workers", "2")
    wait_for(lambda: svc.log().count("all providers ready") == 2, timeout=30)
    _calls(svc, svc.control)
    assert svc.stop() == 0
    report = verify_dir(tmp_path / "trail")
    assert report.problems == [] and report.chains == 2  # one chain per worker
    control = [e for e in entries(tmp_path / "trail") if e["kind"] == "control"]
    adds = [e for e in control if e["method"].endswith("AddEnforcement")]
    assert len(adds) == 2  # each worker applied it and audited it
    assert all(e["caller"].startswith("token:") and "via the supervisor" in e["caller"]
               for e in adds)  # fmt: skip
