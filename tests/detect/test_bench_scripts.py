"""The detection benchmarks keep working: each runs here, tiny (no timed assertions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_sketch_choice() -> None:
    out = run("bench/sketch_choice.py", "--items", "300")
    assert "authz Distinct" in out and "Redis PFADD" in out


def test_detect_flood_stays_within_the_bounds() -> None:
    out = run("bench/detect_flood.py", "--count", "3000", "--tables", "500")
    assert "enumeration.callers 500," in out  # full, and no more
    assert "RSS before" in out


def test_detect_cost() -> None:
    out = run("bench/detect_cost.py", "--calls", "300", "--rounds", "1")
    assert "the stage alone" in out and "ratio" in out


def test_detect_cpu_both_transports_four_arms() -> None:
    out = run("bench/detect_cpu.py", "--calls", "200", "--rounds", "1", "--callers", "50")
    for transport in ("grpc", "http"):
        for arm in ("without", "stage", "stage+scoring", "process"):
            assert f"{transport:4} {arm:14}" in out, out
        assert f"{transport:4} process: the child's scoring" in out
    assert "answered; 0 restarts" in out  # every batch the child was sent, it answered
    assert "loadavg" in out


def test_detect_service_both_transports() -> None:
    out = run("bench/detect_service.py", "--runs", "1", "--duration", "0.5", "--warmup", "0.2")
    for transport in ("grpc", "http"):
        section = out.split(f"{transport}: per request", 1)[1]
        for arm in ("without", "process", "inline"):
            assert f"  {arm:8} serving" in section, out
    assert "errors 0" in out and "errors 1" not in out


def test_detect_cpu_before_and_after() -> None:
    out = run(
        "bench/detect_cpu.py", "--before", "HEAD", "--calls", "100", "--rounds", "1",
        "--callers", "20",
    )  # fmt: skip
    assert "== before (HEAD)" in out and "== after (this tree)" in out
    assert out.count("grpc stage+scoring ") == 2 and out.count("http stage+scoring ") == 2


@pytest.mark.parametrize("seed", ["7"])
def test_detect_compare_catches_every_attacker_and_no_normal(seed: str) -> None:
    out = run("bench/detect_compare.py", "--seed", seed, "--normals", "40", "--minutes", "9")
    statistical = out.split("== statistical:", 1)[1].split("\n==", 1)[0]
    for attacker in ("credential_stuffer", "enumerator", "shared_token", "honeypot_prober"):
        line = next(x for x in statistical.splitlines() if x.startswith(attacker))
        assert " - " not in line, line
    assert "false actions: 0 " in statistical
