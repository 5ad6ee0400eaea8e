"""What one reload poll costs: read and hash the policy and its documents, against a
full parse (what a poll would cost if it reparsed unchanged content).

    .venv/bin/python bench/reload_poll.py

Prints µs per poll for examples/policy.yaml (with its OpenAPI document) and for the
same policy naming a 1 MB OpenAPI document. One run, side by side.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from authz.policy.snapshot import load_snapshot, read_snapshot

ROOT = Path(__file__).resolve().parents[1]


def per_call(fn: Callable[[], object], seconds: float = 1.0) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n * 1e6


def measure(label: str, policy: Path) -> None:
    first = load_snapshot(read_snapshot(str(policy)))
    documents = first.documents
    snap = read_snapshot(str(policy), documents)
    size = len(snap.policy.data or b"") + sum(len(d.data or b"") for d in snap.documents)
    poll = per_call(lambda: read_snapshot(str(policy), documents))
    parse = per_call(lambda: load_snapshot(snap), seconds=2.0)
    print(
        f"{label:<34} {size / 1024:8.1f} KiB  hash poll {poll:9.1f} µs  "
        f"parse {parse:11.1f} µs  parse/poll {parse / poll:7.1f}x"
    )


def main() -> None:
    measure("examples/policy.yaml + openapi", ROOT / "examples" / "policy.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(ROOT / "examples" / "policy.yaml", tmp)
        doc = (ROOT / "examples" / "openapi.yaml").read_text()
        padding = "# " + "x" * 98 + "\n"
        (Path(tmp) / "openapi.yaml").write_text(doc + padding * (1_000_000 // len(padding)))
        measure("same, 1 MB OpenAPI document", Path(tmp) / "policy.yaml")


if __name__ == "__main__":
    main()
