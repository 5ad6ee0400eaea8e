"""The benchmark scripts keep working: each runs here with tiny durations.

This checks that every scenario starts, is driven and reports figures; it makes
no claim about the figures (no timed assertions). The full benchmark is
``python bench/run.py`` and is not part of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_load_generators_are_installed() -> None:
    # scripts/test and bench/setup.sh install them (Debian wrk, nghttp2-client)
    assert shutil.which("wrk"), "wrk missing: run bench/setup.sh"
    assert shutil.which("h2load"), "h2load missing: run bench/setup.sh"


def test_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    run = _run(
        "bench/run.py", "--duration", "1", "--runs", "1", "--warmup", "0",
        "--out", str(tmp_path), "--name", "smoke",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads((tmp_path / "smoke.json").read_text())
    from bench.run import SCENARIOS

    rows = {r["key"]: r for r in data["results"]}
    assert set(rows) == set(SCENARIOS)
    for key, row in rows.items():
        assert row["rps"] > 0, key
        assert len(row["runs"]) == 1
        assert row["service_cpu_us"] > 0, key
    assert data["machine"]["cores"] >= 1
    table = (tmp_path / "smoke.md").read_text()
    assert "| C | Envoy -> authz over gRPC |" in table
    assert "## Targets" in table


def test_benchmark_rejects_unknown_scenarios(tmp_path: Path) -> None:
    run = _run("bench/run.py", "--only", "Z", "--out", str(tmp_path))
    assert run.returncode == 2
    assert "unknown scenario Z" in run.stderr
    assert "Traceback" not in run.stderr


def test_memory_script_reports_bounded_tables(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    run = _run("bench/memory.py", "--count", "300", "--json", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(out.read_text())
    assert data["checks"] == 900
    assert data["outcomes"] == {
        "allowed": 300,
        "spiffe_id_not_allowed": 300,
        "undeclared_route": 300,
    }
    assert data["rss_peak_mib"] > 0
    assert "peak" in run.stdout


@pytest.mark.parametrize("flag", [[], ["--json"]])
def test_profile_script(flag: list[str]) -> None:
    run = _run("bench/profile_engine.py", "--calls", "200", *flag)
    assert run.returncode == 0, run.stdout + run.stderr
    if flag:
        assert set(json.loads(run.stdout)) == {"engine", "grpc", "http"}
    else:
        assert "µs/call" in run.stdout


def test_http_hardening_script(tmp_path: Path) -> None:
    run = _run(
        "bench/http_hardening.py", "--skip-load", "--before", "HEAD", "--calls", "200",
        "--rounds", "1",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads((tmp_path / "http_hardening.json").read_text())
    assert set(data["in_process"]) == {"before", "after", "after+secret"}


def test_credentials_bench_runs() -> None:
    run = _run("bench/credentials.py", "--calls", "200", "--rounds", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "exclusive / first_match = " in run.stdout


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed")
def test_grpc_garbage_bench_runs() -> None:
    run = subprocess.run(
        ["bash", "bench/grpc_garbage.sh", "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 tracebacks for 50 calls" in run.stdout, run.stdout


def test_soak_script_checks_every_status(tmp_path: Path) -> None:
    # a small prefill, capacity measured (1 s each), then 6 s at 30% of it in rows of 2 s: every
    # request's status is checked against its kind; the drift bounds are not judged
    # on rows this short
    run = _run(
        "bench/soak.py", "--minutes", "0.1", "--interval", "2", "--capacity-seconds", "1",
        "--fraction", "0.3", "--prefill", "0.02", "--out", str(tmp_path), "--name", "smoke",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert data["passed"]
    assert data["meta"]["capacity"]["mix"] > 0 and data["meta"]["capacity"]["wrk"] > 0
    prefill = data["meta"]["prefill"]
    assert prefill["identities"] >= 80 and prefill["undeclared_shapes"] >= 200
    assert prefill["unexpected"] == prefill["errors"] == 0
    rows = data["rows"]
    assert len(rows) >= 3
    assert sum(r["done"] for r in rows) == data["meta"]["requests_sent"] > 0
    assert [r["unexpected"] for r in rows] == [0] * len(rows)
    assert [r["errors"] for r in rows] == [0] * len(rows)
    assert all(r["authz_rss_mib"] > 0 and r["envoy_rss_mib"] > 0 for r in rows)
    judged = {c["check"]: c["ok"] for c in data["checks"]}
    assert judged["unexpected statuses, every interval"] is True
    assert judged["authz RSS, last interval vs the second (MiB)"] is None
    observed = {m["kind"]: m["observed"] for m in data["mix"]}
    assert set(observed["hog search"]) <= {"200", "429"}
    assert "| min | req/s | p50 ms |" in (tmp_path / "smoke.md").read_text()
    assert "Traceback" not in run.stderr


def test_soak_script_rejects_bad_arguments(tmp_path: Path) -> None:
    run = _run("bench/soak.py", "--minutes", "0", "--out", str(tmp_path))
    assert run.returncode == 2
    assert "--minutes and --interval must be > 0" in run.stderr
    assert not list(tmp_path.iterdir())


def test_explain_cost_script() -> None:
    run = _run("bench/explain_cost.py", "--calls", "200", "--rounds", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "explain off costs" in run.stdout
    assert "% of check" in run.stdout


def test_policy_lifecycle_script() -> None:
    run = _run("bench/policy_lifecycle.py", "--calls", "100", "--rounds", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "authz test: a case" in run.stdout and "authz diff: compare" in run.stdout
    assert "rollback: rebuilding the kept config" in run.stdout


def test_audit_cost_script(tmp_path: Path) -> None:
    run = _run(
        "bench/audit_cost.py", "--calls", "100", "--rounds", "1", "--dir", str(tmp_path),
        "--breakdown",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    table, _, parts = run.stdout.partition("writer, per record")
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert set(rows) == {"off", "never", "interval", "always"}
    for part in ("serialise (all)", "encode (hand-built)", "encode (generic)", "sha-256"):
        assert part in parts
    assert rows["off"][2] == "1.00"  # the ratios are to the arm without audit
    assert not list(tmp_path.iterdir())  # its trails are removed


def test_telemetry_cost_script() -> None:
    run = _run(
        "bench/telemetry_cost.py", "--duration", "0.5", "--warmup", "0", "--runs", "1",
        "--transports", "http", timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {
        line.split()[0]: line.split() for line in run.stdout.splitlines() if "µs  ratio" in line
    }
    assert set(rows) == {"off", "metrics", "trace1", "trace100"}
    assert rows["off"][4] == "1.000"  # ratios are to the arm without telemetry
    assert int(rows["trace100"][-1]) > 0  # spans reached the receiver


def test_hygiene_cost_bench_runs() -> None:
    run = _run("bench/hygiene_cost.py", "--calls", "200", "--rounds", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "vs without" in run.stdout and "hygiene stage alone" in run.stdout
