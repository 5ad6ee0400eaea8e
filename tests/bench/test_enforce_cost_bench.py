"""The enforcement cost benchmark keeps working: a tiny run, figures not judged."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_enforce_cost_prints_each_setup_and_its_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "enforce_cost.py"), "--calls", "200",
         "--rounds", "2", "--entries", "400"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("load average: ")
    for name in ("off", "empty", "400", "blocked"):
        assert re.search(rf"^{name} +[0-9.]+ µs +[0-9.]+x ", result.stdout, re.M), result.stdout
    assert "400 entries in force, none matching" in result.stdout
