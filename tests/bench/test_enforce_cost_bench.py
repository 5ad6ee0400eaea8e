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
         "--rounds", "2", "--entries", "400", "--memory", "2000"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("load average: ")
    for name in ("off", "empty", "400", "blocked"):
        assert re.search(rf"^{name} +[0-9.]+ µs +[0-9.]+x ", result.stdout, re.M), result.stdout
    assert "400 entries in force, none matching" in result.stdout
    assert re.search(r"^stages alone, 400: enforce_address \d+ ns, enforce_identity \d+ ns",
                     result.stdout, re.M), result.stdout  # fmt: skip
    assert re.search(r"^table memory: \d+ bytes an entry with 2,000 held; \d+ at peak after "
                     r"2,000 more were evicted", result.stdout, re.M), result.stdout  # fmt: skip
