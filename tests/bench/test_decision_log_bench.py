"""The decision-log benchmark keeps working: a tiny run, figures not judged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_prints_every_case() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "decision_log.py"), "--records", "2000",
         "--rounds", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for case in ("before (deque.append)", "emit (bounded)", "ready+emit (deny)",
                 "engine check, before", "engine check, drop", "engine check, deny"):  # fmt: skip
        assert case in result.stdout
