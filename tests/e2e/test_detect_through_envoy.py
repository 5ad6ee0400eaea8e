"""End to end: behavioural detection and automatic responses through a real Envoy.

- a honeypot hit (``/.env``) blocks that caller's address: its later requests,
  declared or not, get 403 ``caller_blocked``, while another caller is served;
- the scenario of bench/detect_scenario.py, short (``--smoke``: 12 normal
  identities, a heavy user, the four attackers, each from its own 127.x.y.z
  addresses): the honeypot prober and the token sharer are actioned, no normal
  identity is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authz import devissuer
from authz.demo.stack import LocalStack
from bench.scenario.driver import send_from

pytestmark = pytest.mark.e2e

ISSUER = "https://issuer.e2e"
ROOT = Path(__file__).resolve().parents[2]

POLICY = """\
mode: enforce
undeclared_routes: deny
realm: shop
providers:
  dev:
    type: jwt
    issuer: {issuer}
    audiences: [shop]
    jwks_file: {jwks}
    algorithms: [ES256]
routes:
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [dev], scopes: [orders:read]}}
detection:
  mode: enforce
  warmup: 0s
  detectors:
    honeypot: {{response: block, target: address, ttl: 1h, paths: ["/.env", "/wp-login.php"]}}
enforcement:
  store: memory
"""


@dataclass
class Env:
    stack: LocalStack
    key: devissuer.DevKey

    def token(self, subject: str) -> str:
        return devissuer.mint(
            self.key, issuer=ISSUER, subject=subject, audience="shop", scopes="orders:read"
        )

    def get(self, source: str, path: str, token: str | None = None) -> tuple[int, str]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return send_from(source, self.stack.listen_port, "GET", path, headers)


@pytest.fixture(scope="module", params=["grpc", "http"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp(f"e2e-detect-{request.param}")
    key = devissuer.generate_key("ES256")
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(devissuer.jwks([key])))
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(issuer=ISSUER, jwks=jwks))
    stack = LocalStack(policy=policy, state_dir=tmp / "state", transport=request.param)
    try:
        stack.start()
        yield Env(stack, key)
    finally:
        stack.stop()


def test_honeypot_hit_blocks_that_caller_on_later_requests(env: Env) -> None:
    mallory, alice = env.token("mallory"), env.token("alice")
    prober, other = "127.88.1.9", "127.88.1.10"
    assert env.get(prober, "/v1/orders/1", mallory) == (200, "")
    assert env.get(other, "/v1/orders/1", alice) == (200, "")

    status, _ = env.get(prober, "/.env")
    assert status in (403, 404)  # the decoy itself: undeclared, or already blocked
    deadline = time.monotonic() + 10  # the scorer runs in the background
    while (answer := env.get(prober, "/v1/orders/1", mallory)) != (403, "caller_blocked"):
        assert answer == (200, ""), answer
        assert time.monotonic() < deadline, "the prober was never blocked"
        time.sleep(0.1)
    # blocked before routing: an undeclared path too, and without a credential
    assert env.get(prober, "/v1/orders/2", mallory) == (403, "caller_blocked")
    assert env.get(prober, "/admin") == (403, "caller_blocked")
    # another caller is not touched
    assert env.get(other, "/v1/orders/1", alice) == (200, "")


def test_smoke_scenario_actions_the_prober_and_the_sharer_not_the_normals(tmp_path: Path) -> None:
    """``bench/detect_scenario.py --smoke``, as the bench README gives it."""
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "detect_scenario.py"), "--smoke",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: a target missed
    assert "| prober | attacker |" in done.stdout and "load average" in done.stdout
    assert "detection: off" not in done.stdout, done.stdout
    figures = json.loads(out.read_text())
    clients = figures["clients"]
    for attacker in ("prober", "sharer"):
        a = clients[attacker]
        assert a["first_action_s"] is not None, (attacker, done.stdout)
        # after its action, what it sends is (nearly all) refused
        assert a["after_upstream"] <= max(2, a["after"] // 10), (attacker, a)
    # the JSON lists a normal identity only when something was done to it
    assert [n for n, c in clients.items() if c["kind"] == "normal"] == [], done.stdout
    assert clients["heavy-ci"]["first_action_s"] is None, done.stdout
