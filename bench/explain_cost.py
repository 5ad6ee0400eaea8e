"""What explain costs when it is off, and what one explained decision costs, one run.

``PolicyEngine.explain`` is a loop of its own (timing each stage, building the trace);
``check`` never enters it. What explain leaves on the ``check`` path is:

- the ``explain`` slot of :class:`~authz.stages.Context` (one more field set when the
  context is built, once per request);
- in the rate-limit stage, a test of ``ctx.explain`` before each charge and counter
  (a dry run gives the charge back and counts nothing): at most three tests per rule.

This script measures, side by side in one process on the benchmark's request
(bench/fixtures.py: cached token, template route, scope check; decision log off):

- ``check``: the production path, explain off (µs per decision);
- ``explain``: the same request explained (µs; what an operator's dry run costs);
- ``context``: building the Context as ``check`` does vs a same-shaped dataclass
  without the ``explain`` field (ns per request: the slot's cost);
- ``tests``: three ``if ctx.explain`` tests (ns: the rate-limit stage's branches).

It prints the off-cost (the context difference plus the tests) as a share of
``check``. Times are CPU time of this process (``time.process_time``), best of
``--rounds`` rounds.

    python bench/explain_cost.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fixtures
from bench.profile_engine import _sync


def _best(fn: Callable[[], Any], calls: int, rounds: int) -> float:
    """Best per-call CPU time of ``rounds`` rounds of ``calls`` calls, in µs."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from authz.engine import CompiledPolicy, PolicyEngine
    from authz.model import ANONYMOUS, Identity, Request
    from authz.policy.config import RouteConfig
    from authz.policy.loader import load_policy
    from authz.server import make_sink
    from authz.stages import Context
    from authz.transport import envoy_grpc

    @dataclass(slots=True)
    class NoExplainContext:  # Context as it would be without the explain field
        request: Request
        path: str
        query: str
        route: RouteConfig | None = None
        plan: Any = None
        identity: Identity = ANONYMOUS
        upstream_headers: list[tuple[str, str]] = field(default_factory=list)
        response_headers: list[tuple[str, str]] = field(default_factory=list)
        decision: Any = None
        record: Any = None

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fx = fixtures.make(work)
        policy = CompiledPolicy(load_policy(fx.policy))
        asyncio.run(policy.start())
        engine = PolicyEngine(policy, sink=make_sink("off"))  # the engine alone
        request = envoy_grpc.to_request(
            envoy_grpc.build_check_request(
                method="GET",
                path=fixtures.PATH,
                host=fixtures.HOST,
                headers={"authorization": f"Bearer {fx.token}", "x-request-id": "r"},
                request_id="r",
            )
        )
        decision = _sync(engine.check(request))
        assert decision.allowed, decision
        explained, steps = asyncio.run(engine.explain(request))
        assert explained.allowed and steps, explained
        ctx = Context(request, "", "")

        def explain_once() -> None:
            coro = engine.explain(request)
            try:
                coro.send(None)
            except StopIteration:
                return
            coro.close()
            raise RuntimeError("explain waited on I/O")

        def three_tests() -> None:
            if ctx.explain:
                raise AssertionError
            if ctx.explain:
                raise AssertionError
            if ctx.explain:
                raise AssertionError

        def nothing() -> None:
            pass

        calls, rounds = args.calls, args.rounds
        check_us = _best(lambda: _sync(engine.check(request)), calls, rounds)
        explain_us = _best(explain_once, calls // 4 or 1, rounds)
        with_slot = _best(lambda: Context(request, "", ""), calls * 5, rounds)
        without_slot = _best(lambda: NoExplainContext(request, "", ""), calls * 5, rounds)
        tests = _best(three_tests, calls * 5, rounds) - _best(nothing, calls * 5, rounds)
        asyncio.run(policy.close())

    slot_ns = max(0.0, (with_slot - without_slot) * 1000)
    tests_ns = max(0.0, tests * 1000)
    off_ns = slot_ns + tests_ns
    print(f"load average: {os.getloadavg()[0]:.2f}; calls {calls}, best of {rounds} rounds (CPU)")
    print(f"check (explain off)      {check_us:8.2f} µs per decision")
    print(f"explain (one dry run)    {explain_us:8.2f} µs  ({explain_us / check_us:.2f}x check)")
    print(f"Context with the slot    {with_slot * 1000:8.1f} ns", end="; ")
    print(f"without {without_slot * 1000:.1f} ns")
    print(f"three ctx.explain tests  {tests_ns:8.1f} ns")
    print(
        f"explain off costs        {off_ns:8.1f} ns per decision = "
        f"{off_ns / (check_us * 1000):.2%} of check"
    )


if __name__ == "__main__":
    main()
