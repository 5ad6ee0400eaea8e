"""What counting through the metrics seam costs per decision, one run.

1. One increment: a plain attribute (``obj.n += 1``, what the stores did before),
   a pre-bound :class:`~authz.telemetry.metrics.MemoryCounter` handle, and a no-op
   handle; ns per increment.
2. A decision through the engine on a policy with an in-process rate limit (the rule
   counters, the decision counters and the memory store's), counting into
   :class:`MemoryMetrics` vs :class:`NoopMetrics`: the whole cost of the counters on
   the request path, µs per decision and the ratio.
3. The same decision (memory metrics) with the package at ``--before`` (a git
   revision, default the commit this work started from) and with this tree, in
   subprocesses, alternately: the cost of this change on that path.

    python bench/metrics_cost.py [--calls 50000] [--rounds 5] [--before REV]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy
from authz.stages import Shared
from authz.telemetry.metrics import MemoryMetrics, Metrics, NoopMetrics

KEY = "key-a-0123456789abcdef"
SHA = hashlib.sha256(KEY.encode()).hexdigest()
POLICY = f"""\
version: 1
providers:
  keys:
    type: api_key
    keys:
      - {{id: a, sha256: {SHA}, owner: a, scopes: [r], expires: "2999-01-01"}}
rate_limits:
  rules:
    - {{name: per-address, rate: 1000000/s, key: [client_address]}}
routes:
  - name: orders
    path: /orders
    methods: [GET]
    providers: [keys]
    rate_limits:
      - {{name: per-key, rate: 1000000/s, key: [subject]}}
"""


class Plain:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def increments(calls: int) -> dict[str, float]:
    plain = Plain()
    memory = MemoryMetrics().counter("authz_x_total", "x").labels()
    noop = NoopMetrics().counter("authz_x_total", "x").labels()
    out = {}
    t = time.perf_counter()
    for _ in range(calls):
        plain.n += 1
    out["attribute += 1"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(calls):
        memory.inc()
    out["memory handle.inc()"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(calls):
        noop.inc()
    out["noop handle.inc()"] = time.perf_counter() - t
    return {k: v / calls * 1e9 for k, v in out.items()}


async def decisions(path: Path, metrics: Metrics, calls: int, telemetry: bool = False) -> float:
    """µs per decision; ``telemetry``: as ``serve --metrics`` runs it (each stage timed,
    the decision's latency observed, the policy version)."""
    shared = Shared()
    shared.metrics = metrics
    listeners = []
    if telemetry:
        from authz.telemetry.decisions import DecisionMetrics
        from authz.telemetry.stages import StageLatency

        shared.step_probe = StageLatency(metrics).wrap
        listeners.append(DecisionMetrics(metrics))
    policy = CompiledPolicy(load_policy(path), shared=shared)
    engine = PolicyEngine(policy, listeners=listeners)
    requests = [
        Request(
            method="GET",
            path="/orders",
            headers={"x-api-key": KEY},
            source_address=f"192.0.2.{i % 200}",
        )
        for i in range(calls)
    ]
    check = engine.check
    assert (await check(requests[0])).allowed
    t = time.perf_counter()
    for r in requests:
        await check(r)
    return (time.perf_counter() - t) / calls * 1e6


ROOT = Path(__file__).resolve().parents[1]
#: main when this change began.
BEFORE = "e403a14"


def _child(root: Path, calls: int) -> float:
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "metrics_cost.py"), "--child", "--calls", str(calls)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.split()[-1])


def before_after(rev: str, calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="authz-before-") as work:
        archive = Path(work) / "before.tar"
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "authz"], check=True
        )
        shutil.unpack_archive(archive, work)
        (Path(work) / "bench").mkdir()
        shutil.copy(Path(__file__), Path(work) / "bench" / "metrics_cost.py")
        best: dict[str, float] = {}
        for _ in range(rounds):
            for label, root in (("before", Path(work)), ("after", ROOT)):
                best[label] = min(_child(root, calls), best.get(label, float("inf")))
    print(
        f"decision with rate limits, before {best['before']:7.2f} µs, after {best['after']:7.2f} µs"
    )
    print(f"after/before {best['after'] / best['before']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        with tempfile.TemporaryDirectory() as work:
            path = Path(work) / "p.yaml"
            path.write_text(POLICY)
            print(asyncio.run(decisions(path, MemoryMetrics(), args.calls)))
        return 0
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, ns in increments(args.calls * 10).items():
            best[name] = min(ns, best.get(name, float("inf")))
    for name, ns in best.items():
        print(f"{name:24} {ns:7.1f} ns")
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "p.yaml"
        path.write_text(POLICY)
        times: dict[str, float] = {}
        for _ in range(args.rounds):  # alternate, keep the best of each
            for name, make, telemetry in (
                ("noop metrics", NoopMetrics, False),
                ("memory metrics", MemoryMetrics, False),
                ("--metrics", MemoryMetrics, True),
            ):
                us = asyncio.run(decisions(path, make(), args.calls, telemetry))
                times[name] = min(us, times.get(name, float("inf")))
    for name, us in times.items():
        print(f"decision, {name:16} {us:7.2f} µs")
    print(f"memory/noop {times['memory metrics'] / times['noop metrics']:.3f}")
    print(f"--metrics/memory {times['--metrics'] / times['memory metrics']:.3f}")
    before_after(args.before, args.calls, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
