"""The SVID cost benchmark keeps working: a tiny run, figures not judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_svid_bench_reports_every_case(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "svid_cost.py"), "--calls", "50",
         "--miss-calls", "5", "--rounds", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {r["case"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"principal", "certificate hit", "certificate miss"}
    assert all(r["us_per_call"] > 0 for r in rows.values())
