"""End to end: a honeypot hit through a real Envoy blocks that caller's later requests
(both transports), and `authz actions` lists the detector's action with its evidence."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from authz import devissuer
from authz.demo.stack import LocalStack
from authz.demo.stack import http as send

pytestmark = pytest.mark.e2e

POLICY = """\
mode: enforce
realm: orders
providers:
  dev: {{type: jwt, issuer: "{issuer}", audiences: [orders], algorithms: [ES256]}}
routes:
  - {{name: orders, path: /v1/orders, methods: [GET], providers: [dev], scopes: [orders:read]}}
detection:
  mode: enforce
  interval: 100ms
  detectors:
    honeypot: {{response: block, target: address, ttl: 10m, paths: ["/.env", "/.git/**"]}}
"""


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_honeypot_hit_blocks_the_caller(
    transport: str, tmp_path: Path, issuer: devissuer.DevIssuerServer, mint: Callable[..., str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(issuer=issuer.url))
    stack = LocalStack(policy=policy, state_dir=tmp_path / "state", transport=transport)
    token = mint("alice", "orders:read")
    auth = {"authorization": f"Bearer {token}"}
    try:
        stack.start()
        assert send("GET", stack.base_url + "/v1/orders", auth)[0] == 200
        assert send("GET", stack.base_url + "/.git/config", {})[0] == 404  # the decoy
        # the tests' client reaches Envoy from 127.0.0.1: that address is now hostile
        deadline = time.monotonic() + 5
        while send("GET", stack.base_url + "/v1/orders", auth)[0] == 200:
            assert time.monotonic() < deadline, "not blocked within 5 s"
            time.sleep(0.02)
        status, _, body = send("GET", stack.base_url + "/v1/orders", auth)
        assert status == 403 and json.loads(body)["error"] == "caller_blocked"
        listed = subprocess.run(
            [sys.executable, "-m", "authz", "actions", "--json",
             "--control", f"127.0.0.1:{stack.control_port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert "honeypot" in listed.stdout and "/.git/config" in listed.stdout
    finally:
        stack.stop()
