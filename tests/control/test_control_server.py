"""The control plane against running services: real sockets, real certificates.

Without credentials refused, with a token or a client certificate answered, a
certificate from another CA refused, a non-loopback address without credentials
refused at start, every call logged with its caller, and ``--workers 2``
answering as one service.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.transport.envoy_grpc import build_check_request
from authz.v1 import admin_pb2, admin_pb2_grpc
from tests.certs import make_mtls_pki
from tests.support import ServiceProcess, free_port, grpc_serving, wait_for

POLICY = """\
mode: enforce
undeclared_routes: deny
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
  - name: once
    path: /once
    methods: [GET]
    public: true
    rate_limits: [{name: once-a-minute, rate: 1/m}]
"""
TOKEN = "t0ken-" + "x" * 40


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def check(address: str, path: str, *, source: str = "10.0.0.1") -> None:
    with grpc.insecure_channel(address) as channel:  # a new connection each time
        request = build_check_request(
            method="GET", path=path, host="api.local", headers={}, body=b"",
            source_address=source,
        )  # fmt: skip
        external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)


def admin(
    address: str,
    method: str,
    request: Any,
    *,
    token: str | None = None,
    creds: grpc.ChannelCredentials | None = None,
) -> Any:
    channel = (
        grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override",
                                                      "localhost")])
        if creds is not None
        else grpc.insecure_channel(address)
    )  # fmt: skip
    with channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        return getattr(stub, method)(request, timeout=5, metadata=metadata)


INVENTORY = admin_pb2.GetInventoryRequest()


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[no-any-return]


def test_bearer_token(
    tmp_path: Path, policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    token_file = tmp_path / "control.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    svc = start_service(policy, "--control-token-file", str(token_file))
    check(svc.address, "/healthz")
    assert code_of(lambda: admin(svc.control, "GetInventory", INVENTORY)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert code_of(lambda: admin(svc.control, "GetInventory", INVENTORY, token="no" * 20)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    inventory = admin(svc.control, "GetInventory", INVENTORY, token=TOKEN)
    assert [(e.path, e.count) for e in inventory.endpoints] == [("/healthz", 1)]
    # health stays open: an orchestrator probes the port without credentials
    with grpc.insecure_channel(svc.control) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # every call logged, with the caller
    lines = [x for x in svc.log().splitlines() if "authz.control" in x and "control call" in x]
    assert sum("UNAUTHENTICATED" in x and " by - " in x for x in lines) == 2
    answered = [x for x in lines if x.endswith("ms)") and ": OK" in x]
    assert len(answered) == 1
    assert re.search(r"GetInventory by token:[0-9a-f]{8} from ipv4:127\.0\.0\.1:\d+: OK", lines[-1])
    assert TOKEN not in svc.log()

    # the CLI, with --token-file
    cli = [sys.executable, "-m", "authz", "inventory", "--control", svc.control]
    run = subprocess.run([*cli, "--token-file", str(token_file), "--json"],
                         capture_output=True, text=True, env=svc.env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["endpoints"][0]["path"] == "/healthz"
    run = subprocess.run(cli, capture_output=True, text=True, env=svc.env)
    assert run.returncode == 3 and "UNAUTHENTICATED" in run.stderr


def test_mutual_tls(
    tmp_path: Path, policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    pki = make_mtls_pki(tmp_path / "pki")
    svc = start_service(
        policy,
        "--control-tls-cert", pki.server.cert, "--control-tls-key", pki.server.key,
        "--control-client-ca", pki.ca.cert,
    )  # fmt: skip
    ca = Path(pki.ca.cert).read_bytes()
    (spiffe_id, client), *_ = pki.clients.items()

    def with_cert(cert: str, key: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(ca, Path(key).read_bytes(), Path(cert).read_bytes())

    answered = admin(svc.control, "GetInventory", INVENTORY,
                     creds=with_cert(client.cert, client.key))  # fmt: skip
    assert answered.policy_version.startswith("sha256:")
    # a client certificate from another CA never gets a connection
    stranger = with_cert(pki.stranger.cert, pki.stranger.key)
    assert code_of(lambda: admin(svc.control, "GetInventory", INVENTORY, creds=stranger)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    no_cert = grpc.ssl_channel_credentials(ca)
    assert code_of(lambda: admin(svc.control, "GetInventory", INVENTORY, creds=no_cert)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    assert f"GetInventory by {spiffe_id} from" in svc.log()

    cli = [sys.executable, "-m", "authz", "inventory", "--control", svc.control, "--ca",
           pki.ca.cert, "--tls-cert", client.cert, "--tls-key", client.key]  # fmt: skip
    # the certificate names localhost: connect by that name
    cli[cli.index(svc.control)] = svc.control.replace("127.0.0.1", "localhost")
    run = subprocess.run(cli, capture_output=True, text=True, env=svc.env)
    assert run.returncode == 0, run.stderr
    assert "0 endpoints" in run.stdout.splitlines()[0]


def test_non_loopback_without_credentials_refused(policy: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "authz", "serve", str(policy), "--grpc", "127.0.0.1:0",
         "--control", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 2
    assert "--control 0.0.0.0:0: 0.0.0.0 is not a loopback address" in run.stderr
    assert "Traceback" not in run.stderr


def test_loopback_default_token(policy: Path, start_service: Callable[..., ServiceProcess]) -> None:
    svc = start_service(policy)
    port = int(svc.control.rsplit(":", 1)[1])
    token_file = svc.runtime / f"control-{port}.token"
    assert token_file.stat().st_mode & 0o077 == 0
    assert code_of(lambda: admin(svc.control, "GetInventory", INVENTORY)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    token = token_file.read_text().strip()
    assert admin(svc.control, "GetInventory", INVENTORY, token=token).workers == 1
    run = subprocess.run([sys.executable, "-m", "authz", "inventory", "--control", svc.control],
                         capture_output=True, text=True, env=svc.env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    svc.stop()
    assert not token_file.exists()


def test_ext_authz_port_serves_no_admin(
    policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    svc = start_service(policy)
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def services(address: str, token: str | None = None) -> set[str]:
        with grpc.insecure_channel(address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            metadata = (("authorization", f"Bearer {token}"),) if token else None
            replies = stub.ServerReflectionInfo(iter([request]), timeout=5, metadata=metadata)
            return {s.name for r in replies for s in r.list_services_response.service}

    listed = services(svc.address)
    assert "envoy.service.auth.v3.Authorization" in listed
    assert "authz.v1.Admin" not in listed
    assert code_of(lambda: admin(svc.address, "GetInventory", INVENTORY)) == (
        grpc.StatusCode.UNIMPLEMENTED
    )
    # ... and the control plane lists it (reflection there needs credentials too)
    port = int(svc.control.rsplit(":", 1)[1])
    token = (svc.runtime / f"control-{port}.token").read_text().strip()
    assert code_of(lambda: services(svc.control)) == grpc.StatusCode.UNAUTHENTICATED
    assert "authz.v1.Admin" in services(svc.control, token)


def test_explain_is_a_dry_run(policy: Path, start_service: Callable[..., ServiceProcess]) -> None:
    svc = start_service(policy)
    port = int(svc.control.rsplit(":", 1)[1])
    token = (svc.runtime / f"control-{port}.token").read_text().strip()
    explain = admin_pb2.ExplainRequest(url="http://api.local/once", source_address="10.9.9.9")
    for _ in range(3):  # 1/m: a real request would be limited the second time
        answer = admin(svc.control, "Explain", explain, token=token)
        assert (answer.allowed, answer.reason, answer.route) == (True, "allowed", "once")
    steps = {(s.phase, s.name): s for s in answer.steps}
    assert steps[("post", "ratelimit")].outcome == "pass" or steps[("pre", "ratelimit")].outcome
    undeclared = admin_pb2.ExplainRequest(url="http://api.local/nope")
    denied = admin(svc.control, "Explain", undeclared, token=token)
    assert (denied.allowed, denied.status, denied.reason) == (False, 404, "undeclared_route")
    assert [s.outcome for s in denied.steps if s.name == "route"] == ["deny"]
    # nothing recorded, counted or charged: the first real request passes the limit
    inventory = admin(svc.control, "GetInventory", INVENTORY, token=token)
    assert list(inventory.endpoints) == []
    counters = admin(svc.control, "GetCounters", admin_pb2.GetCountersRequest(), token=token)
    assert not [s for s in counters.series if s.name == "authz_decisions_total" and s.value]
    check(svc.address, "/once")
    counters = admin(svc.control, "GetCounters",
                     admin_pb2.GetCountersRequest(prefix="authz_decisions"), token=token)  # fmt: skip
    got = [({h.name: h.value for h in s.labels}, s.value) for s in counters.series]
    assert got == [({"route": "once", "decision": "allow", "reason": "allowed"}, 1.0)]
    assert svc.decision_log.read_text().count('"decision_id"') <= 1


def test_cli_explain_against_the_service(
    policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    svc = start_service(policy)
    cli = [sys.executable, "-m", "authz", "explain", "--control", svc.control]
    allow = subprocess.run([*cli, "http://api.local/healthz"], capture_output=True, text=True,
                           env=svc.env)  # fmt: skip
    assert allow.returncode == 0, allow.stderr
    assert allow.stdout.startswith("ALLOW 200 allowed\n")
    assert re.search(r"route\s+route\s+[\d.]+ µs\s+pass\s+\[health\]", allow.stdout)
    deny = subprocess.run([*cli, "http://api.local/nope", "--json"], capture_output=True,
                          text=True, env=svc.env)  # fmt: skip
    assert deny.returncode == 1, deny.stderr
    out = json.loads(deny.stdout)
    assert (out["decision"], out["status"], out["reason"]) == ("deny", 404, "undeclared_route")
    assert {"name": "route", "outcome": "deny"}.items() <= next(
        s for s in out["steps"] if s["name"] == "route"
    ).items()
    assert "Explain by token:" in svc.log()


def test_workers_answer_as_one_service(tmp_path: Path, policy: Path) -> None:
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
                return admin(control, "GetCounters", admin_pb2.GetCountersRequest(),
                             token=token).workers == 2  # fmt: skip
            except grpc.RpcError:
                return False

        wait_for(both_up, timeout=60)
        sent = 40
        for i in range(sent):  # a new connection each: SO_REUSEPORT spreads them
            check(address, "/healthz", source=f"10.0.0.{i % 5}")
        inventory = admin(control, "GetInventory", INVENTORY, token=token)
        assert inventory.workers == 2
        (health,) = inventory.endpoints
        assert (health.path, health.count, dict(health.outcomes)) == (
            "/healthz",
            sent,
            {"allowed": sent},
        )
        assert health.distinct_callers == 5  # the union of the workers' sketches
        counters = admin(control, "GetCounters",
                         admin_pb2.GetCountersRequest(prefix="authz_decisions_total"),
                         token=token)  # fmt: skip
        assert sum(s.value for s in counters.series) == sent
        # each worker's own share, from its private socket: both took some (the chance
        # that 40 connections all land on one worker is 2**-39), and they add up
        shares = [
            admin("unix:" + socket, "GetInventory", INVENTORY).endpoints[0].count
            for socket in worker_sockets(proc.pid)
        ]
        assert len(shares) == 2 and all(shares) and sum(shares) == sent, shares
        explained = admin(control, "Explain", admin_pb2.ExplainRequest(url="http://a/healthz"),
                          token=token)  # fmt: skip
        assert explained.allowed
        text = log.read_text()
        assert re.search(r"GetInventory by token:[0-9a-f]{8} from .*: OK", text)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not (runtime / f"control-{control_port}.token").exists()


def worker_sockets(supervisor: int) -> list[str]:
    """The private control sockets of the supervisor's workers (from their argv)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    sockets = []
    for child in children:
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        sockets.append(argv[argv.index(b"--control-worker-socket") + 1].decode())
    return sockets


def test_inventory_without_a_service() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "authz", "inventory", "--control", "127.0.0.1:1", "--timeout",
         "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 3
    assert "UNAVAILABLE" in run.stderr and "Traceback" not in run.stderr


def test_the_control_plane_certificate_is_reloaded_when_its_files_change(
    tmp_path: Path, policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    import socket
    import ssl
    import time

    from cryptography import x509

    from tests.certs import generate_ca, issue_cert

    ca = generate_ca("control CA")
    ca_files = ca.write(tmp_path, "control-ca")
    server = issue_cert(ca, "control", ip_addresses=["127.0.0.1"], server=True)
    files = server.write(tmp_path, "control")
    client = issue_cert(ca, "operator", uris=["spiffe://demo.local/ops"], client=True)
    client_files = client.write(tmp_path, "operator")
    svc = start_service(
        policy, "--control-tls-cert", files.cert, "--control-tls-key", files.key,
        "--control-client-ca", ca_files.cert,
    )  # fmt: skip
    host, port = svc.control.rsplit(":", 1)

    def served_serial() -> int:
        context = ssl.create_default_context(cafile=ca_files.cert)
        context.set_alpn_protocols(["h2"])
        context.load_cert_chain(client_files.cert, client_files.key)
        raw = socket.create_connection((host, int(port)), timeout=5)
        with raw, context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)

    assert served_serial() == server.certificate.serial_number
    renewed = issue_cert(ca, "control-2", ip_addresses=["127.0.0.1"], server=True)
    Path(files.key).write_text(renewed.key_pem)  # the key first: a pair that matches
    Path(files.cert).write_text(renewed.cert_pem)
    deadline = time.monotonic() + 10
    while served_serial() != renewed.certificate.serial_number:
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.3)
