"""`authz serve` run with the Deployment's own args, in the layout kubelet gives the
pod: the ConfigMap as a directory of symlinks (policy.yaml -> ..data/policy.yaml,
..data -> a timestamped directory), the Secret's files, the emptyDir paths. An update
of the ConfigMap, done the way kubelet does it (a new directory, then ..data swapped
atomically by rename), is loaded by the running service without a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.demo.stack import free_port, grpc_serving
from tests.deploy.manifests import container, one, render
from tests.support import wait_for

AUTHZ = str(Path(sys.executable).parent / "authz")
PRINCIPAL = "spiffe://cluster.local/ns/shop/sa/reporting"
METRICS_TOKEN = "m" * 40
POLICY = """version: 1
mode: enforce
undeclared_routes: deny
providers:
  mesh: {type: mtls, trust_domains: [cluster.local]}
routes:
  - {name: a, path: /v1/a, methods: [GET], providers: [mesh]}
"""
POLICY_B = POLICY + "  - {name: b, path: /v1/b, methods: [GET], providers: [mesh]}\n"


def kubelet_write(directory: Path, files: dict[str, str], version: int) -> None:
    """Write a ConfigMap volume's new contents as kubelet's atomic writer does."""
    stamp = directory / f"..2026_12_03_00_00_0{version}.000000000"
    stamp.mkdir()
    for name, text in files.items():
        (stamp / name).write_text(text)
    old = os.readlink(directory / "..data") if (directory / "..data").exists() else None
    (directory / "..data_tmp").symlink_to(stamp.name)
    os.rename(directory / "..data_tmp", directory / "..data")  # the atomic swap
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    if old is not None:
        for child in (directory / old).iterdir():
            child.unlink()
        (directory / old).rmdir()


def pod_args(root: Path, ports: dict[int, int]) -> list[str]:
    """The Deployment's args with its paths under ``root`` and its ports remapped."""
    out = []
    for arg in container(render("base"))["args"]:
        arg = arg.replace("/etc/authz/", f"{root}/etc/authz/")
        arg = arg.replace("$(AUTHZ_WORKERS)", "2")  # what requests.cpu "2" gives
        for old, new in ports.items():
            arg = arg.replace(f":{old}", f":{new}")
        out.append(arg)
    return out


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    policy_dir = tmp_path / "etc/authz/policy"
    policy_dir.mkdir(parents=True)
    kubelet_write(policy_dir, {"policy.yaml": POLICY}, 1)
    secrets = tmp_path / "etc/authz/secrets"
    secrets.mkdir()
    (secrets / "control-token").write_text("c" * 40 + "\n")
    (secrets / "http-secret").write_text("h" * 40 + "\n")
    (secrets / "metrics-token").write_text(METRICS_TOKEN + "\n")
    volumes = one(render("base"), "Deployment")["spec"]["template"]["spec"]["volumes"]
    (mode,) = [v["secret"]["defaultMode"] for v in volumes if "secret" in v]
    assert mode == 0o440  # readable by the pod's fsGroup, which owns the files
    for secret in secrets.iterdir():
        secret.chmod(mode)
    for d in ("run", "tmp"):
        (tmp_path / d).mkdir(mode=0o700)
    grpc = free_port()
    ports = {9191: grpc, 9192: free_port(), 9193: free_port(), 9200: free_port()}
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run"), "TMPDIR": str(tmp_path / "tmp")}
    log = open(tmp_path / "authz.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [AUTHZ, *pod_args(tmp_path, ports), "--decision-log", "off"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        address = f"127.0.0.1:{grpc}"

        def serving() -> bool:
            assert proc.poll() is None, (tmp_path / "authz.log").read_text()
            try:
                return grpc_serving(address)
            except Exception:
                return False

        wait_for(serving, timeout=60, interval=0.2)
        yield policy_dir, grpc, ports[9200]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def decide(grpc: int, path: str) -> str:
    result = subprocess.run(
        [AUTHZ, "check", f"http://api.local{path}", "--principal", PRINCIPAL,
         "--server", f"127.0.0.1:{grpc}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return result.stdout.split()[0] if result.stdout else result.stderr


def test_a_configmap_update_by_symlink_swap_is_loaded_without_a_restart(
    pod: tuple[Path, int, int],
) -> None:
    policy_dir, grpc, _ = pod
    assert decide(grpc, "/v1/a") == "ALLOW"
    assert decide(grpc, "/v1/b") == "DENY"  # undeclared
    kubelet_write(policy_dir, {"policy.yaml": POLICY_B}, 2)
    assert (policy_dir / "policy.yaml").read_text() == POLICY_B
    # every worker answers from the new policy (several checks: both processes)
    wait_for(lambda: all(decide(grpc, "/v1/b") == "ALLOW" for _ in range(6)), timeout=30)


def test_the_images_health_check_passes_against_the_pod(pod: tuple[Path, int, int]) -> None:
    from tests.deploy.test_container import healthcheck

    _, grpc, _ = pod
    command = [sys.executable, *healthcheck()[1:]]
    command[-1] = command[-1].replace(":9191'", f":{grpc}'")
    assert subprocess.run(command, timeout=30).returncode == 0


def test_the_probes_services_are_serving_on_the_pod(pod: tuple[Path, int, int]) -> None:
    """What kubelet's gRPC probes ask (grpc.health.v1 Check, each probe's service)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, port, _ = pod
    c = container(render("base"))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            service = c[probe]["grpc"].get("service", "")
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, probe


def test_the_metrics_port_answers_the_secrets_token_only(pod: tuple[Path, int, int]) -> None:
    """What the scrape config in deploy/kubernetes/prometheus-scrape.yaml does: GET
    /metrics with the Secret's metrics-token as a bearer token; without it, 401."""
    import urllib.error
    import urllib.request

    _, _, metrics = pod
    url = f"http://127.0.0.1:{metrics}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
        assert b"# TYPE" in reply.read()


def test_the_pods_secret_files_raise_no_warning(pod: tuple[Path, int, int], tmp_path: Path) -> None:
    """0440 with the fsGroup (what kubelet mounts) is not "readable by other users"."""
    assert "can be read by other users" not in (tmp_path / "authz.log").read_text()
