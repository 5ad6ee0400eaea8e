"""The rate-limit benchmark keeps working: a few seconds of it (--quick), figures not judged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_every_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ratelimit.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("### Cost per decision") == 2
    assert "### Accuracy" in out
    assert "### Memory" in out
    for store in ("no limit", "memory, 1 rule", "redis, 1 rule", "redis batched"):
        assert f"| {store}" in out
    accuracy = out.split("### Accuracy", 1)[1].split("###", 1)[0]
    rows = [line.split("|") for line in accuracy.splitlines() if line.startswith("| redis")]
    assert len(rows) == 4
    for row in rows:  # exact Redis never admits past its quota (the numbers are not timed)
        admitted, quota = int(row[4]), int(row[5])
        if "batched" not in row[1]:
            assert admitted <= quota + 1
