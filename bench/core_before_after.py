"""The decision core before and after issue 9 (stages, record, reasons, metrics), one run.

Runs ``bench/profile_engine.py`` (the hot path in one process: engine alone, the
gRPC path and the HTTP path, µs per call) against two trees on the same machine,
alternately, ``--runs`` times each: "before" is the package at ``--before`` (a git
revision, extracted to a temporary directory; default the commit this work started
from) and "after" is this tree, with explain off (``check`` never runs the explain
loop, so this is the cost explain adds when off). Prints, per path, the median
µs of the runs, the median and range of the per-run ratios after/before, and the
ratio of the best runs.

    python bench/core_before_after.py [--before REV] [--runs 3] [--calls 20000] [--wall]

Times are per-decision CPU (``profile_engine.py --cpu``: the process CPU clock, every
thread, so the decision log's writer counts) unless ``--wall``: on a shared machine
the wall clock also counts the time other processes held the core.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
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


def _run(root: Path, calls: int, cpu: bool) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "profile_engine.py"),
            "--json",
            "--calls",
            str(calls),
            *(["--cpu"] if cpu else []),
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
    parser.add_argument(
        "--wall", action="store_true", help="wall clock instead of the process CPU clock"
    )
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="authz-before-") as work:
        trees = {"before": _tree(args.before, Path(work)), "after": ROOT}
        for _ in range(args.runs):
            for label, root in trees.items():
                runs[label].append(_run(root, args.calls, not args.wall))
    clock = "wall clock" if args.wall else "process CPU clock"
    print(f"{args.runs} runs of {args.calls} calls each, before and after alternately; {clock}")
    print(
        f"{'path':8} {'before µs':>10} {'after µs':>10} {'median ratio':>13}"
        f" {'ratio range':>13} {'best ratio':>11}"
    )
    for path in runs["before"][0]:
        before = [r[path] for r in runs["before"]]
        after = [r[path] for r in runs["after"]]
        # each run's ratio pairs the after process with the before process next to it
        ratios = sorted(a / b for a, b in zip(after, before, strict=True))
        b_med, a_med = statistics.median(before), statistics.median(after)
        print(
            f"{path:8} {b_med:10.2f} {a_med:10.2f} {statistics.median(ratios):13.3f}"
            f" {ratios[0]:6.3f}-{ratios[-1]:<6.3f} {min(after) / min(before):11.3f}"
        )
    print("(µs: medians of the runs; best ratio: best after / best before)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
