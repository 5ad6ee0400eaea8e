"""The decision core before and after issue 9 (stages, record, reasons, metrics), one run.

Runs ``bench/profile_engine.py`` (the hot path in one process: engine alone, the
gRPC path and the HTTP path, µs per call) against two trees on the same machine,
alternately, ``--runs`` times each: "before" is the package at ``--before`` (a git
revision, extracted to a temporary directory; default the commit this work started
from) and "after" is this tree, with explain off (``check`` never runs the explain
loop, so this is the cost explain adds when off). Prints the best of the runs and
the ratio after/before.

    python bench/core_before_after.py [--before REV] [--runs 3] [--calls 20000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: main when issue 9 began (issue 8 merged): the tree before this work.
BEFORE = "3824b6e"


def _tree(rev: str, work: Path) -> Path:
    """``authz`` at ``rev`` plus this tree's bench scripts, in ``work``."""
    archive = work / "before.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "authz"], check=True
    )
    shutil.unpack_archive(archive, work)
    (work / "bench").mkdir()
    for name in ("__init__.py", "fixtures.py", "profile_engine.py"):
        shutil.copy(ROOT / "bench" / name, work / "bench" / name)
    return work


def _run(root: Path, calls: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "profile_engine.py"),
            "--json",
            "--calls",
            str(calls),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="authz-before-") as work:
        trees = {"before": _tree(args.before, Path(work)), "after": ROOT}
        best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
        for _ in range(args.runs):
            for label, root in trees.items():
                for path, us in _run(root, args.calls).items():
                    best[label][path] = min(us, best[label].get(path, float("inf")))
    print(f"{'path':8} {'before µs':>10} {'after µs':>10} {'after/before':>13}")
    for path, before in best["before"].items():
        after = best["after"][path]
        print(f"{path:8} {before:10.2f} {after:10.2f} {after / before:13.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
