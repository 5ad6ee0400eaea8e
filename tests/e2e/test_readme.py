"""The README stays true: every command in its bash blocks is run here.

The quick start's `./scripts/test` is what CI runs; `./scripts/demo` is run with
`--smoke`; every other command runs against a live `authz demo` started from the
repository root, exactly as a reader would type it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.demo.stack import grpc_serving

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "AUTHZ_VENV": sys.prefix}

# Statuses the README promises for its curl lines, in order.
CURL_STATUSES = [200, 200, 401, 403, 404, 200, 200, 400]


def blocks(lang: str) -> list[list[str]]:
    found = re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)
    return [
        [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
        for block in found
    ]


def commands() -> list[str]:
    return [line for block in blocks("bash") for line in block]


def test_quick_start_is_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    assert [b.strip() for b in found] == ["./scripts/demo", "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci


def test_only_docker_and_the_benchmark_are_not_run() -> None:
    # Kept apart: the one command we cannot run here (no Docker engine) and the full
    # benchmark (minutes of load; tests/test_bench_smoke.py runs it with tiny durations).
    # Also kept apart: the commands that need a Kubernetes cluster (tests/deploy checks
    # what they name: the Secret's keys, the namespace, the overlay).
    assert blocks("sh") == [
        [
            "kubectl create namespace authz-system",
            "openssl rand -hex 32 > control.token && openssl rand -hex 32 > http.secret "
            "&& openssl rand -hex 32 > metrics.token",
            "kubectl -n authz-system create secret generic authz-secrets "
            "--from-file=control-token=control.token --from-file=http-secret=http.secret "
            "--from-file=metrics-token=metrics.token",
            "kubectl apply -k deploy/kubernetes/overlays/redis",
        ],
        ["docker compose up --build"],
        ["bash bench/setup.sh", ".venv/bin/python bench/run.py"],
    ]


@pytest.fixture(scope="module")
def demo() -> Iterator[subprocess.Popen[bytes]]:
    log = open(ROOT / ".authz-demo-test.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "authz"), "demo", "--policy", "examples/policy.yaml"],
        cwd=ROOT,
        env=ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (ROOT / ".authz-demo-test.log").read_text()
            try:
                if (
                    grpc_serving("127.0.0.1:9191")
                    and b"Ctrl-C" in (ROOT / ".authz-demo-test.log").read_bytes()
                ):
                    break
            except Exception:
                pass
            time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        log.close()
        (ROOT / ".authz-demo-test.log").unlink(missing_ok=True)


def run(line: str) -> subprocess.CompletedProcess[str]:
    if line.startswith("kubectl kustomize ") and shutil.which("kubectl") is None:
        # kubectl is in neither Debian nor PyPI: the same rendering, by the tests' own
        # kustomize subset (tests/deploy checks it equal to kubectl's where both exist)
        line = line.replace("kubectl kustomize ", f"{sys.executable} -m tests.deploy.manifests ", 1)
    return subprocess.run(
        ["bash", "-c", line], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60
    )


def test_every_readme_command_runs(demo: subprocess.Popen[bytes]) -> None:
    curl_statuses = []
    ran = 0
    for line in commands():
        if line in ("./scripts/demo", "./scripts/test"):
            continue  # quick start: see test_demo_script_smoke and CI
        result = run(line)
        ran += 1
        words = line.split()
        if words[0] == "curl" and "/metrics" in line:  # the demo's Prometheus scrape
            assert result.returncode == 0, (line, result.stderr)
            assert 'authz_decisions_total{route="' in result.stdout, result.stdout
        elif words[0] == "curl":
            assert result.returncode == 0, (line, result.stderr)
            curl_statuses.append(int(result.stdout.split()[1]))
        elif words[:2] == ["authz", "replay"]:  # exit 1: the candidate changes outcomes
            assert result.returncode in (0, 1), (line, result.stderr)
            assert result.stdout.startswith("replayed "), result.stdout
        elif words[:2] == ["authz", "check"]:
            assert result.returncode in (0, 1), (line, result.stderr)
            assert result.stdout.startswith(("ALLOW", "DENY", "{")), result.stdout
        elif words[:2] == ["authz", "diff"]:  # exit 1: the files differ, as diff(1)
            assert result.returncode == 1, (line, result.stdout, result.stderr)
            assert result.stdout.startswith(("---", "{")), result.stdout
        elif words[:3] == ["promtool", "check", "rules"]:
            assert result.returncode == 0, (line, result.stdout, result.stderr)
            assert "SUCCESS" in result.stdout, result.stdout
        else:
            assert result.returncode == 0, (line, result.stdout, result.stderr)
    assert curl_statuses == CURL_STATUSES
    assert ran >= 15


def test_demo_script_smoke(demo: subprocess.Popen[bytes]) -> None:
    # The same script a newcomer runs; --smoke sends the four example requests
    # and checks their statuses. The demo fixture holds the fixed ports, so stop
    # it first.
    demo.send_signal(signal.SIGINT)
    demo.wait(timeout=30)
    result = subprocess.run(
        ["bash", "scripts/demo", "--smoke", "--state-dir", ".authz-demo-smoke"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok  ") == 4
