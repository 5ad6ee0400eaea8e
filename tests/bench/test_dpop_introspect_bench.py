"""The DPoP / introspection cost benchmark keeps working: a tiny run, figures not judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dpop_introspect_bench_reports_every_case(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dpop_introspect_cost.py"), "--calls", "20",
         "--miss-calls", "3", "--rounds", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {r["case"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {
        "jwt hit", "jwt miss", "dpop", "x5t", "introspection hit", "introspection miss",
    }  # fmt: skip
    assert all(r["us_per_call"] > 0 for r in rows.values())
    assert "introspection miss" in result.stdout
