"""The JWT cache-hit benchmark keeps working: a tiny run, figures not judged."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_jwt_cache_bench_prints_both_paths_and_a_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "jwt_cache.py"), "--calls", "200", "--rounds", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^before +[0-9.]+ µs/hit \(best round\)$", result.stdout, re.M)
    assert re.search(r"^after +[0-9.]+ µs/hit \(best round\)$", result.stdout, re.M)
    assert re.search(
        r"^ratio after/before [0-9.]+ \(median of back-to-back pairs\)$", result.stdout, re.M
    )
