"""What counting through the metrics seam costs per decision, one run.

1. One increment: a plain attribute (``obj.n += 1``, what the stores did before),
   a pre-bound :class:`~authz.telemetry.metrics.MemoryCounter` handle, and a no-op
   handle; ns per increment.
2. A decision through the engine on a policy with an in-process rate limit (the rule
   counters, the decision counters and the memory store's), counting into
   :class:`MemoryMetrics` vs :class:`NoopMetrics`: the whole cost of the counters on
   the request path, µs per decision and the ratio.

    python bench/metrics_cost.py [--calls 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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


async def decisions(path: Path, metrics: Metrics, calls: int) -> float:
    shared = Shared()
    shared.metrics = metrics
    engine = PolicyEngine(CompiledPolicy(load_policy(path), shared=shared))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
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
            for name, make in (("noop metrics", NoopMetrics), ("memory metrics", MemoryMetrics)):
                us = asyncio.run(decisions(path, make(), args.calls))
                times[name] = min(us, times.get(name, float("inf")))
    for name, us in times.items():
        print(f"decision, {name:16} {us:7.2f} µs")
    print(f"memory/noop {times['memory metrics'] / times['noop metrics']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
