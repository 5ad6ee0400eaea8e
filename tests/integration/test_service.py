"""The running gRPC service: Check, health, reflection, grpcurl, the check CLI,
hot reload, SIGHUP, SIGTERM drain and several workers on one port."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz import devissuer
from authz.transport.envoy_grpc import build_check_request
from tests.support import ServiceProcess, jwt_policy, wait_for

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def check(address: str, **kw: Any) -> Any:
    kw.setdefault("method", "GET")
    kw.setdefault("host", "api.local")
    kw.setdefault("headers", {})
    with grpc.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        return stub.Check(build_check_request(**kw), timeout=10)


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


@pytest.fixture()
def policy_file(tmp_path: Path, issuer: devissuer.DevIssuerServer) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(jwt_policy(issuer.url))
    return path


def test_check_allows_and_denies(
    policy_file: Path, start_service: Callable[..., ServiceProcess], mint: Callable[..., str]
) -> None:
    svc = start_service(policy_file)
    ok = check(svc.address, path="/v1/orders/7", headers={"authorization": f"Bearer {mint()}"})
    assert ok.HasField("ok_response")
    upstream = {h.header.key: h.header.value for h in ok.ok_response.headers}
    assert upstream["x-authz-subject"] == "alice"
    denied = check(svc.address, path="/v1/orders/7")
    assert denied.denied_response.status.code == 401
    assert json.loads(denied.denied_response.body)["error"] == "missing_credential"
    wait_for(lambda: len(svc.decision_log.read_text().splitlines()) == 2)
    records = [json.loads(line) for line in svc.decision_log.read_text().splitlines()]
    assert [r["reason"] for r in records] == ["allowed", "missing_credential"]
    assert records[0]["time"].endswith("Z")


def test_health_waits_for_keys(
    tmp_path: Path,
    issuer: devissuer.DevIssuerServer,
    start_service: Callable[..., ServiceProcess],
) -> None:
    issuer.unavailable = True
    policy = tmp_path / "policy.yaml"
    policy.write_text(jwt_policy(issuer.url, jwks_timeout="0.5s"))
    svc = start_service(policy, wait=False)
    wait_for(lambda: _try_health(svc.address) is not None, 20)
    assert _try_health(svc.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    issuer.unavailable = False
    wait_for(lambda: _try_health(svc.address) == health_pb2.HealthCheckResponse.SERVING, 30)


def _try_health(address: str) -> int | None:
    try:
        return health(address)
    except grpc.RpcError:
        return None


def test_reflection_and_grpcurl(
    policy_file: Path, start_service: Callable[..., ServiceProcess], mint: Callable[..., str]
) -> None:
    svc = start_service(policy_file)
    listed = subprocess.run(
        [GRPCURL, "-plaintext", svc.address, "list"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "envoy.service.auth.v3.Authorization" in services
    assert "grpc.health.v1.Health" in services
    body = json.dumps(
        {
            "attributes": {
                "request": {
                    "http": {
                        "method": "GET",
                        "host": "api.local",
                        "path": "/v1/orders/1",
                        "headers": {"authorization": f"Bearer {mint()}"},
                    }
                }
            }
        }
    )
    called = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-d",
            body,
            svc.address,
            "envoy.service.auth.v3.Authorization/Check",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert called.returncode == 0, called.stderr
    reply = json.loads(called.stdout)
    assert "ok_response" in reply  # this grpcurl prints proto field names
    assert reply["dynamic_metadata"]["subject"] == "alice"


def test_check_cli(
    policy_file: Path, start_service: Callable[..., ServiceProcess], mint: Callable[..., str]
) -> None:
    svc = start_service(policy_file)
    token = mint(scopes="orders:read")
    allowed = subprocess.run(
        [
            sys.executable,
            "-m",
            "authz",
            "check",
            "--server",
            svc.address,
            "-H",
            f"Authorization: Bearer {token}",
            "http://api.local/v1/orders/9",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("ALLOW 200 allowed")
    denied = subprocess.run(
        [
            sys.executable,
            "-m",
            "authz",
            "check",
            "--server",
            svc.address,
            "-H",
            f"Authorization: Bearer {token}",
            "-d",
            "{}",
            "http://api.local/v1/orders",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert denied.returncode == 1
    assert denied.stdout.startswith("DENY 403 insufficient_scope")
    assert 'error="insufficient_scope", scope="orders:write"' in denied.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "authz",
            "check",
            "--server",
            svc.address,
            "-H",
            "nocolon",
            "http://api.local/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert "expected 'Name: value'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_reload_on_change_rejects_invalid_and_sighup(
    policy_file: Path,
    start_service: Callable[..., ServiceProcess],
    mint: Callable[..., str],
    issuer: devissuer.DevIssuerServer,
) -> None:
    svc = start_service(policy_file)
    first = check(svc.address, path="/v1/items")
    assert first.denied_response.status.code == 404
    version1 = first.dynamic_metadata["policy_version"]

    # a valid change swaps in without a restart
    policy_file.write_text(
        jwt_policy(issuer.url, "  - {name: items, path: /v1/items, methods: [GET], public: true}\n")
    )
    wait_for(lambda: check(svc.address, path="/v1/items").HasField("ok_response"))
    version2 = check(svc.address, path="/v1/items").dynamic_metadata["policy_version"]
    assert version2 != version1

    # an invalid one is rejected with its location, and the old one keeps serving
    policy_file.write_text("routes:\n  - name: broken\n    path: nope\n")
    wait_for(lambda: "policy reload rejected" in svc.log())
    assert f"{policy_file}:3:11" in svc.log()
    assert check(svc.address, path="/v1/items").dynamic_metadata["policy_version"] == version2

    # SIGHUP reloads too (with the reload poller off, only the signal can do it)
    p3 = policy_file.with_name("p3.yaml")
    p3.write_text(jwt_policy(issuer.url))
    svc3 = start_service(p3, "--reload-interval", "0")
    p3.write_text(
        jwt_policy(issuer.url, "  - {name: items, path: /v1/items, methods: [GET], public: true}\n")
    )
    time.sleep(0.3)
    assert check(svc3.address, path="/v1/items").denied_response.status.code == 404
    svc3.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: check(svc3.address, path="/v1/items").HasField("ok_response"))


class _SlowJwks(ThreadingHTTPServer):
    """A JWKS endpoint whose answers can be delayed, to hold a Check in flight."""

    def __init__(self, key: devissuer.DevKey) -> None:
        self.key = key
        self.delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(server.delay)
                body = json.dumps(devissuer.jwks([server.key])).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_sigterm_drains_in_flight_calls(
    tmp_path: Path, dev_key: devissuer.DevKey, start_service: Callable[..., ServiceProcess]
) -> None:
    jwks = _SlowJwks(dev_key)
    try:
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            jwt_policy(
                "https://issuer.test",
                jwks_uri=f"http://127.0.0.1:{jwks.server_address[1]}/jwks.json",
                jwks_refresh_interval="0s",
            )
        )
        svc = start_service(policy)
        jwks.delay = 2.0
        other = devissuer.generate_key("ES256")  # unknown kid: forces a (slow) refresh
        token = devissuer.mint(
            other,
            issuer="https://issuer.test",
            subject="x",
            audience="orders",
            scopes="orders:read",
        )
        result: dict[str, Any] = {}

        def call() -> None:
            result["reply"] = check(
                svc.address, path="/v1/orders/1", headers={"authorization": f"Bearer {token}"}
            )

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)  # the call is now waiting on the JWKS refresh
        svc.proc.send_signal(signal.SIGTERM)
        caller.join(timeout=15)
        assert svc.proc.wait(timeout=15) == 0
        reply = result["reply"]  # answered, not cut off by the shutdown
        assert reply.denied_response.status.code == 401
        assert reply.dynamic_metadata["reason"] == "token_unknown_kid"
        assert "draining" in svc.log()
    finally:
        jwks.shutdown()


def test_workers_share_one_port(
    policy_file: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    svc = start_service(policy_file, "--workers", "2")
    # Health answers as soon as one worker serves; the other may still be starting.
    prefixes: set[str] = set()
    deadline = time.monotonic() + 30
    while len(prefixes) < 2 and time.monotonic() < deadline:
        reply = check(svc.address, path="/healthz")  # a new connection each time
        prefixes.add(reply.dynamic_metadata["decision_id"].split("-")[0])
    assert len(prefixes) == 2, "both worker processes answered"
    assert svc.stop() == 0


def test_serve_refuses_invalid_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: sometimes\nroutes: []\n")
    run = subprocess.run(
        [sys.executable, "-m", "authz", "serve", str(bad), "--grpc", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert f"{bad}:1:7: $.mode: must be one of enforce, monitor" in run.stderr
    assert "refusing to serve" in run.stderr


# ----------------------------------------------------------------------------- HTTP transport


def http_check(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/check" + path, headers={"host": "api.local", **(headers or {})})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def http_health(port: int) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def test_grpc_and_http_transports_share_one_engine(
    policy_file: Path,
    start_service: Callable[..., ServiceProcess],
    mint: Callable[..., str],
) -> None:
    from authz.demo.stack import free_port

    port = free_port()
    svc = start_service(policy_file, "--http", f"127.0.0.1:{port}")
    wait_for(lambda: http_health(port) == 200)
    token = mint()
    status, headers, _ = http_check(port, "/v1/orders/7", {"authorization": f"Bearer {token}"})
    assert status == 200
    assert headers["x-authz-subject"] == "alice"
    ok = check(svc.address, path="/v1/orders/7", headers={"authorization": f"Bearer {token}"})
    assert {h.header.key: h.header.value for h in ok.ok_response.headers}["x-authz-subject"] == (
        "alice"
    )
    status, headers, body = http_check(port, "/v1/orders/7")
    assert status == 401
    assert json.loads(body)["error"] == "missing_credential"
    # one engine: one decision log, one id sequence
    ids = [headers["x-authz-meta-decision-id"], ok.dynamic_metadata["decision_id"]]
    assert len({i.split("-")[0] for i in ids}) == 1
    wait_for(lambda: len(svc.decision_log.read_text().splitlines()) == 3)
    assert svc.stop() == 0
    assert "draining" in svc.log()


def test_http_only_with_two_workers(policy_file: Path, tmp_path: Path) -> None:
    from authz.demo.stack import free_port

    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", str(policy_file), "--http",
         f"127.0.0.1:{port}", "--workers", "2", "--decision-log", "off", "--control", "off"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:

        def healthy() -> bool:
            try:
                return http_health(port) == 200
            except OSError:
                return False

        wait_for(healthy, timeout=30)
        prefixes: set[str] = set()
        deadline = time.monotonic() + 30
        while len(prefixes) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, headers, _ = http_check(port, "/healthz")  # a new connection each time
                prefixes.add(headers["x-authz-meta-decision-id"].split("-")[0])
        assert len(prefixes) == 2, "both worker processes answered"
        # no gRPC port unless asked for
        assert "gRPC" not in (tmp_path / "serve.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log.close()


def test_serve_rejects_a_bad_http_address(tmp_path: Path, policy_file: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "authz", "serve", str(policy_file), "--http", "nowhere"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert "expected HOST:PORT, got 'nowhere'" in run.stderr
    assert "Traceback" not in run.stderr
