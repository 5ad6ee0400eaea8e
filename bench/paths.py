"""Cost of path canonicalisation, this tree against another checkout, side by side.

``python -m bench.paths [/path/to/other/authz/paths.py]`` (default: /work/main's)
prints µs per call for a mix of canonical paths (the fast path, what Envoy sends)
and paths that need work, and the ratio this/other. One run, same process.
"""

from __future__ import annotations

import importlib.util
import sys
import timeit
from pathlib import Path
from types import ModuleType

from authz import paths as this

CANONICAL = ["/v1/orders", "/v1/orders/42", "/v1/files/a/b/c.txt", "/healthz", "/v1/orders?x=1"]
WORK = ["/v1//orders/./42", "/v1/%6Frders/a/../42", "/a//../b", "/v1/orders/%C3%A9/", "/x;y/z"]


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("other_paths", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _per_call(module: ModuleType, targets: list[str], number: int = 5000) -> float:
    canonicalize = module.canonicalize

    def run() -> None:
        for t in targets:
            canonicalize(t)

    return timeit.timeit(run, number=number) / (number * len(targets)) * 1e6


def main(argv: list[str]) -> int:
    other = _load(Path(argv[0] if argv else "/work/main/authz/paths.py"))
    for name, targets in (("canonical (fast path)", CANONICAL), ("needs work", WORK)):
        # interleaved, best of 21 each: the box is shared, the minimum is the cost
        a = b = float("inf")
        for _ in range(21):
            a = min(a, _per_call(this, targets))
            b = min(b, _per_call(other, targets))
        print(f"{name:22} this {a:.3f} µs  other {b:.3f} µs  ratio {a / b:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
