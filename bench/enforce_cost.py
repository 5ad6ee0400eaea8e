"""What enforcement costs per decision, one run: the same policy without it, with it
and nothing in force, and with 10,000 entries in force that do not match.

The request is the benchmark's (bench/fixtures.py: ``GET /v1/orders/42``, a cached
token, a template route, a scope check; decision log off). Three engines, built from
the same policy file but for its ``enforcement:`` section:

- ``off``: no ``enforcement:`` (no stage is built: the baseline);
- ``empty``: ``enforcement:`` and nothing in force (each stage: one attribute read);
- ``10k``: 10,000 entries in force, none matching the request: 2,500 each of
  addresses, /24 prefixes, subjects and tokens (a lookup per target kind present).

Rounds alternate between the engines (so drift on a shared machine hits all three
alike); each figure is the best round's CPU time per decision (``time.process_time``),
and the ratios are of those best rounds; the cost of a denied request (a blocked
subject) is shown beside them, for scale. Each stage alone (its step on the request
after identity: steadier than a whole decision on a busy machine), empty and full.
Then the table's memory: bytes an entry
(tracemalloc) with ``--memory`` entries held, and after as many again were put
through the full table (evictions; the expiry heap at its bound).

    python bench/enforce_cost.py [--calls 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fixtures
from bench.profile_engine import _sync

ENFORCEMENT = "\nenforcement:\n  max_entries: 100000\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--memory", type=int, default=100_000)
    args = parser.parse_args()

    from authz.engine import CompiledPolicy, PolicyEngine
    from authz.policy.loader import load_policy
    from authz.respond.stage import find_enforcer
    from authz.server import make_sink
    from authz.stages import Shared
    from authz.transport import envoy_grpc

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fx = fixtures.make(work)
        with_section = work / "enforced.yaml"
        with_section.write_text(fx.policy.read_text() + ENFORCEMENT)
        request = envoy_grpc.to_request(
            envoy_grpc.build_check_request(
                method="GET", path=fixtures.PATH, host=fixtures.HOST,
                headers={"authorization": f"Bearer {fx.token}", "x-request-id": "r"},
                request_id="r", source_address="192.0.2.10",
            )
        )  # fmt: skip
        policies = []

        def engine(path: Path) -> Any:
            policy = CompiledPolicy(load_policy(path), shared=Shared())
            asyncio.run(policy.start())
            policies.append(policy)
            built = PolicyEngine(policy, sink=make_sink("off"))
            assert _sync(built.check(request)).allowed
            return built

        off, empty, full = engine(fx.policy), engine(with_section), engine(with_section)
        enforcer = find_enforcer(full.policy.shared)
        assert enforcer is not None and find_enforcer(off.policy.shared) is None
        quarter = args.entries // 4
        for i in range(quarter):
            a, b = divmod(i, 256)
            enforcer.add("block", "address", f"10.{a % 256}.{b}.{i % 200 + 1}", 3600, by="bench")
            enforcer.add("block", "prefix", f"172.{16 + a % 16}.{b}.0/24", 3600, by="bench")
            enforcer.add("revoke", "subject", f"user-{i}", 3600, by="bench")
            enforcer.add("revoke", "token", f"jti-{i}", 3600, by="bench")
        assert len(enforcer.table) == 4 * quarter
        assert _sync(full.check(request)).allowed  # none matches
        blocked_shared = Shared()
        blocked_policy = CompiledPolicy(load_policy(with_section), shared=blocked_shared)
        asyncio.run(blocked_policy.start())
        policies.append(blocked_policy)
        blocked = PolicyEngine(blocked_policy, sink=make_sink("off"))
        blocker = find_enforcer(blocked_shared)
        assert blocker is not None
        subject = _sync(off.check(request)).identity.subject
        blocker.add("block", "subject", subject, 3600, by="bench")
        assert _sync(blocked.check(request)).reason == "caller_blocked"

        label = f"{args.entries // 1000}k" if args.entries >= 1000 else str(args.entries)
        runs: dict[str, Callable[[], Any]] = {
            "off": lambda: _sync(off.check(request)),
            "empty": lambda: _sync(empty.check(request)),
            label: lambda: _sync(full.check(request)),
            "blocked": lambda: _sync(blocked.check(request)),
        }
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(args.rounds):
            for name, fn in runs.items():
                start = time.process_time()
                for _ in range(args.calls):
                    fn()
                best[name] = min(best[name], (time.process_time() - start) / args.calls)
        stages = {
            "empty": stage_costs(empty, request, args.calls * 5, args.rounds),
            label: stage_costs(full, request, args.calls * 5, args.rounds),
        }
        for policy in policies:
            asyncio.run(policy.close())

    base = best["off"]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average: {load}; {args.calls} decisions x {args.rounds} rounds "
          "(alternating), best round, CPU per decision")  # fmt: skip
    for name, value in best.items():
        note = {
            "off": "no enforcement: section (baseline)",
            "empty": "enforcement on, nothing in force",
            "blocked": "a blocked subject (403 caller_blocked), for scale",
        }.get(name, f"{len(enforcer.table):,} entries in force, none matching")
        print(f"{name:<8} {value * 1e6:8.2f} µs  {value / base:5.3f}x  {note}")
    for name, (address, identity) in stages.items():
        print(f"stages alone, {name}: enforce_address {address:.0f} ns, "
              f"enforce_identity {identity:.0f} ns per request (best round)")  # fmt: skip
    held, churned, evicted = table_memory(args.memory)
    print(f"table memory: {held:.0f} bytes an entry with {args.memory:,} held; "
          f"{churned:.0f} at peak after {evicted:,} more were evicted through it")  # fmt: skip


def stage_costs(engine: Any, request: Any, calls: int, rounds: int) -> tuple[float, float]:
    """ns per call of each enforcement stage's step alone, on the request after identity
    (steadier than the whole decision on a busy machine)."""
    from authz.stages import Context

    policy = engine.policy
    decision = _sync(engine.check(request))
    ctx = Context(request, fixtures.PATH, "")
    ctx.identity = decision.identity
    address = next(s for s in policy.head if s.name == "enforce_address")
    identity = next(s for s in policy.plans[decision.route].stages if s.name == "enforce_identity")
    out = []
    for stage in (address, identity):
        step = stage.step
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(calls):
                step(ctx)
            best = min(best, (time.process_time() - start) / calls)
        out.append(best * 1e9)
    return out[0], out[1]


def table_memory(n: int) -> tuple[float, float, int]:
    """Bytes an entry (tracemalloc): ``n`` held; peak after ``n`` more evicted."""
    import tracemalloc

    from authz.respond.table import Entry, Table

    def entry(i: int, now: float) -> Entry:
        target = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        return Entry("block", "address", target, now, now + 3600, "detector", "honeypot",
                     (("path", "/.env"),))  # fmt: skip

    now = time.time()
    tracemalloc.start()
    table = Table(n)
    for i in range(n):
        table.put(entry(i, now))
    held = tracemalloc.get_traced_memory()[0] / n
    for i in range(n, 2 * n):
        table.put(entry(i + (1 << 24), now))
    peak = tracemalloc.get_traced_memory()[1] / n
    tracemalloc.stop()
    return held, peak, table.evictions


if __name__ == "__main__":
    main()
