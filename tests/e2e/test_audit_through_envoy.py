"""The audit trail under load through a real Envoy, with SIGTERM to authz in the
middle: every response authz decided has its record, the chain verifies with the
signing key, and nothing is lost."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from tests.audit.helpers import key_files

pytestmark = pytest.mark.e2e

KEY = "audit-e2e-key-0123456789abcdef"
POLICY = """\
audit:
  dir: trail
  signing_key: audit.pem
  checkpoint: {{records: 200, interval: 200ms}}
  fsync: {fsync}
providers:
  legacy:
    type: api_key
    header: x-api-key
    keys: [{{id: e2e, sha256: {digest}, owner: reporting, scopes: [orders:read], expires: "2999-01-01"}}]
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [legacy], scopes: [orders:read]}}
  - {{name: create-order, path: /v1/orders, methods: [POST], providers: [legacy], scopes: [orders:write]}}
"""
REQUESTS = [
    ("GET", "/healthz", {}),
    ("GET", "/v1/orders/7", {"x-api-key": KEY}),
    ("GET", "/v1/orders/8", {}),  # 401
    ("POST", "/v1/orders", {"x-api-key": KEY}),  # 403
    ("GET", "/v1/nope", {}),  # 404
]


def _request_id(status: int, body: bytes) -> str | None:
    """The x-request-id of a decision authz made: echoed by the upstream on an allow
    (with the decision id authz set), in the deny body on a deny; None for Envoy's own
    answer (authz gone) and for public routes (Envoy does not ask authz for them)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if status == 200:
        seen = data.get("headers", {})
        return seen.get("x-request-id") if "x-authz-decision-id" in seen else None
    return data.get("request_id")  # type: ignore[no-any-return]


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_sigterm_under_load_loses_no_record(tmp_path: Path, fsync: str) -> None:
    key_files(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(fsync=fsync, digest=hashlib.sha256(KEY.encode()).hexdigest()))
    stack = LocalStack(policy=policy, state_dir=tmp_path / "state").start()
    decided: list[str] = []
    other = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + 4.0

    def client(offset: int) -> None:
        i = offset
        while time.monotonic() < stop_at and i < offset + 20_000:  # bounded in time and count
            method, path, headers = REQUESTS[i % len(REQUESTS)]
            status, _, body = send(method, stack.base_url + path, headers)
            rid = _request_id(status, body)
            with lock:
                if rid:
                    decided.append(rid)
                else:
                    other[0] += 1
            i += 1

    try:
        threads = [threading.Thread(target=client, args=(k * 100_000,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        service = stack.procs[0]
        service.send_signal(signal.SIGTERM)  # authz drains and exits mid-load
        assert service.wait(timeout=20) == 0
        for t in threads:
            t.join()
    finally:
        stack.stop()
    assert len(decided) > 200, (len(decided), other)
    assert other[0] > 0  # public routes, and Envoy's own answers once authz left
    run = subprocess.run(
        [sys.executable, "-m", "authz", "audit", "verify", str(tmp_path / "trail"),
         "--key", str(tmp_path / "audit.pub")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert f" {len(decided)} records" in run.stdout, (run.stdout, len(decided))
    recorded = [
        entry["request_id"]
        for path in sorted((tmp_path / "trail").iterdir())
        for entry in map(json.loads, path.read_text().splitlines())
        if entry["kind"] == "decision"
    ]
    assert sorted(recorded) == sorted(decided)  # responses sent = records verified
