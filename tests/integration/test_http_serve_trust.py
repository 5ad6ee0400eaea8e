"""`authz serve --http` as a process: where it may bind without a transport secret,
and a secret-guarded port on all interfaces."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from authz.demo.stack import free_port
from authz.transport.envoy_http import SECRET_HEADER

POLICY = """\
mode: enforce
undeclared_routes: deny
providers:
  mesh: {type: mtls, trust_domains: [demo.local]}
routes:
  - {name: mesh-only, path: /v1/mesh, methods: [GET], providers: [mesh]}
"""
PEER = "spiffe://demo.local/ns/ops/sa/prometheus"
SECRET = "0123456789abcdef0123456789abcdef"


def test_serve_refuses_a_non_loopback_http_port_without_a_secret(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    run = subprocess.run(
        [sys.executable, "-m", "authz", "serve", str(policy), "--http", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 2
    assert "0.0.0.0 is not a loopback address" in run.stderr
    assert "Traceback" not in run.stderr


def test_serve_with_a_secret_on_all_interfaces(tmp_path: Path) -> None:

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "authz", "serve", str(policy), "--http", f"0.0.0.0:{port}",
             "--http-secret-file", str(secret), "--decision-log", "off", "--control", "off"],
            stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def status(headers: dict[str, str]) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/check/v1/mesh", headers={"host": "a", **headers}
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                first = status({})
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        forged = {"x-authz-peer-principal": PEER}
        assert first == 403
        assert status(forged) == 403
        assert status({**forged, SECRET_HEADER: SECRET}) == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert "no x-authz-transport-secret header" in log.read_text()
