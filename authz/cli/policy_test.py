"""``authz test POLICY [TESTS...]``: run a policy's test cases through the real engine.

TESTS are test files or directories of them (``*.yaml``); without any, the files of
``tests/`` beside the policy (``POLICY_DIR/tests/*.yaml``). The format is in
:mod:`authz.policytest.spec`, how they run in :mod:`authz.policytest.runner`.

Output: one ``PASS``/``FAIL`` line per case, under a failure each field that
differs (expected, got), then a summary line. Exit 0: every case passed; 1: a case
failed; 2: the policy or a test file is invalid (every problem, located, and nothing
is run) or there are no tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from authz.errors import PolicyError


def test_files(policy: str, given: list[str]) -> list[Path]:
    """The files to run, in order (directories: their ``*.yaml``, sorted)."""
    if not given:
        default = Path(policy).parent / "tests"
        if not default.is_dir():
            return []
        given = [str(default)]
    out: list[Path] = []
    for item in given:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            out.append(path)
    return out


def cmd_test(args: argparse.Namespace) -> int:
    from authz.policy.loader import load_policy
    from authz.policytest.runner import render, run_file
    from authz.policytest.spec import TestFileError, load_test_file

    started = time.perf_counter()
    try:
        config = load_policy(args.policy)
    except PolicyError as exc:
        for location, message in exc.problems:
            print(f"{location}: {message}", file=sys.stderr)
        return 2
    files = test_files(args.policy, args.tests)
    if not files:
        where = " ".join(args.tests) or str(Path(args.policy).parent / "tests")
        print(f"authz test: no test files in {where}", file=sys.stderr)
        return 2
    loaded = []
    bad = False
    for path in files:
        try:
            loaded.append(load_test_file(path, config))
        except TestFileError as exc:
            bad = True
            for location, message in exc.problems:
                print(f"{location}: {message}", file=sys.stderr)
    if bad:
        print("authz test: invalid test file(s); nothing was run", file=sys.stderr)
        return 2
    passed = failed = 0
    for test in loaded:
        try:
            results = asyncio.run(run_file(config, test))
        except TestFileError as exc:
            for location, message in exc.problems:
                print(f"{location}: {message}", file=sys.stderr)
            return 2
        for line in render(results, test.path):
            print(line, flush=True)
        failed += sum(1 for r in results if not r.passed)
        passed += sum(1 for r in results if r.passed)
    took = time.perf_counter() - started
    files_text = f"{len(loaded)} file{'s' if len(loaded) != 1 else ''}"
    verdict = "FAILED" if failed else "OK"
    print(f"{verdict}: {passed} passed, {failed} failed ({files_text}, {took:.2f}s)")
    return 1 if failed else 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "test",
        help="run a policy's test cases (requests and expected decisions) through the engine",
    )
    p.add_argument("policy", help="the policy file")
    p.add_argument(
        "tests", nargs="*", metavar="TESTS",
        help="test files or directories (default: POLICY_DIR/tests/*.yaml)",
    )  # fmt: skip
    p.set_defaults(func=cmd_test)
