"""What the audit trail costs per decision, by fsync policy, against no audit (one run).

One process, no sockets: ``PolicyEngine.check`` on a mix of requests (an API-key
caller allowed, one without a credential, one with too few scopes, an undeclared
path) under the same policy in four arms, each with its own engine and, but for
``off``, its own started audit writer (``checkpoint`` every 1000 records, the
defaults otherwise) in a directory on disk (``--dir``; default a temporary one
beside this repository, not /tmp, which may be a tmpfs where fsync is free):

- ``off``: no ``audit:`` section;
- ``never`` / ``interval`` (100 ms) / ``always`` (after every batch): the fsync policy.

Per decision, process CPU (``time.process_time``: every thread, so the writer's
serialisation, hashing, signing and fsync calls count) for ``--calls`` decisions and
the wait until the writer has written them, over ``--rounds`` rounds with the arms
in rotating order; also the wall time of the same span. Prints medians and ratios to
``off``.

    python bench/audit_cost.py [--calls 5000] [--rounds 9] [--dir DIR] [--breakdown]

``--breakdown`` also prints what the writer spends per record (process CPU, best of
``--rounds``, on ``--calls`` queued records): the whole batch serialisation, the
decision line encoder alone, the generic ``canonical(decision_entry(...))`` it
replaces, and the chain's SHA-256.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz.audit.chain import keygen
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy
from authz.stages import Shared

KEY = "bench-key-0123456789abcdef"
POLICY = """\
{audit}providers:
  legacy:
    type: api_key
    header: x-api-key
    keys: [{{id: bench, sha256: {digest}, owner: bench, scopes: [orders:read], expires: "2999-01-01"}}]
routes:
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [legacy], scopes: [orders:read]}}
  - {{name: create-order, path: /v1/orders, methods: [POST], providers: [legacy], scopes: [orders:write]}}
"""  # noqa: E501
ARMS = ("off", "never", "interval", "always")


def requests(n: int) -> list[Request]:
    shapes = [
        ("GET", "/v1/orders/{i}?limit=5", {"x-api-key": KEY}),
        ("GET", "/v1/orders/{i}", {"x-api-key": KEY}),
        ("GET", "/v1/orders/{i}", {}),
        ("POST", "/v1/orders", {"x-api-key": KEY, "content-type": "application/json"}),
        ("GET", "/v1/nope/{i}", {}),
    ]
    out = []
    for i in range(n):
        method, path, headers = shapes[i % len(shapes)]
        out.append(
            Request(method, path.format(i=i), host="api.local", headers=headers,
                    request_id=f"r{i}", source_address=f"10.0.{i % 250}.{i % 200}")
        )  # fmt: skip
    return out


def build(arm: str, work: Path) -> tuple[PolicyEngine, Any]:
    audit = ""
    if arm != "off":
        audit = (
            f"audit: {{dir: {work / arm}, signing_key: {work / 'audit.pem'}, fsync: {arm}, "
            "checkpoint: {records: 1000}}\n"
        )
    path = work / f"{arm}.yaml"
    path.write_text(POLICY.format(audit=audit, digest=hashlib.sha256(KEY.encode()).hexdigest()))
    policy = CompiledPolicy(load_policy(path), shared=Shared())
    return PolicyEngine(policy), policy


async def measure(engine: PolicyEngine, writer: Any, batch: list[Request]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for ``batch`` decided and written."""
    target = (writer.stats().written + len(batch)) if writer is not None else 0
    cpu, wall = time.process_time(), time.perf_counter()
    for request in batch:
        await engine.check(request)
    if writer is not None:
        while writer.stats().written < target:
            await asyncio.sleep(0.001)
    return time.process_time() - cpu, time.perf_counter() - wall


async def main(calls: int, rounds: int, work: Path) -> dict[str, list[tuple[float, float]]]:
    private, _ = keygen()
    (work / "audit.pem").write_bytes(private)
    arms = {arm: build(arm, work) for arm in ARMS}
    for _, policy in arms.values():
        await policy.shared.runtimes.start()
    batch = requests(calls)
    results: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
    for engine, policy in arms.values():  # warm-up: caches, first file
        await measure(engine, policy.audit.writer if policy.audit else None, batch[:200])
    for r in range(rounds):
        order = ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]
        for arm in order:
            engine, policy = arms[arm]
            writer = policy.audit.writer if policy.audit is not None else None
            cpu, wall = await measure(engine, writer, batch)
            results[arm].append((cpu / calls, wall / calls))
    for _, policy in arms.values():
        await policy.shared.runtimes.aclose()
    return results


async def breakdown(calls: int, rounds: int, work: Path) -> dict[str, float]:
    """µs per record of the writer's parts (its thread's work, run here directly)."""
    from authz.audit.chain import canonical, line_hash
    from authz.audit.entry import decision_entry

    engine, policy = build("never", work)
    writer = policy.audit.writer
    for request in requests(calls):  # the writer is not started: the records stay queued
        await engine.check(request)
    items = list(writer._queue)
    writer._queue.clear()
    await policy.shared.runtimes.start()
    prev = "0" * 64
    lines = [writer._encoder.line(r, v, 1, prev) for r, v in items]

    def generic() -> None:
        for r, v in items:
            entry = decision_entry(r, v, writer._time)
            entry["seq"], entry["prev"] = 1, prev
            canonical(entry)

    parts: dict[str, Callable[[], object]] = {
        "serialise (all)": lambda: writer._serialise(items),
        "encode (hand-built)": lambda: [writer._encoder.line(r, v, 1, prev) for r, v in items],
        "encode (generic)": generic,
        "sha-256": lambda: [line_hash(line) for line in lines],
    }
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, run in parts.items():
            started = time.process_time()
            run()
            spent = (time.process_time() - started) / len(items)
            best[name] = min(best.get(name, spent), spent)
    await policy.shared.runtimes.aclose()
    return best


def report(results: dict[str, list[tuple[float, float]]], calls: int, rounds: int) -> None:
    base_cpu = statistics.median(c for c, _ in results["off"])
    base_wall = statistics.median(w for _, w in results["off"])
    print(f"audit cost per decision: {calls} decisions x {rounds} rounds, medians")
    print(f"{'arm':<10} {'CPU us':>8} {'x off':>7} {'wall us':>8} {'x off':>7}")
    for arm in ARMS:
        cpu = statistics.median(c for c, _ in results[arm])
        wall = statistics.median(w for _, w in results[arm])
        print(
            f"{arm:<10} {cpu * 1e6:>8.1f} {cpu / base_cpu:>7.2f} "
            f"{wall * 1e6:>8.1f} {wall / base_wall:>7.2f}"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--dir", type=Path, default=None, help="where the trails go (on disk)")
    parser.add_argument("--breakdown", action="store_true", help="the writer's parts too")
    args = parser.parse_args()
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be >= 1")
    base = args.dir or Path(__file__).resolve().parent
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".audit-bench-", dir=base) as work:
        results = asyncio.run(main(args.calls, args.rounds, Path(work)))
        parts: dict[str, float] = {}
        if args.breakdown:
            parts = asyncio.run(breakdown(args.calls, args.rounds, Path(work)))
    report(results, args.calls, args.rounds)
    if parts:
        print("writer, per record (process CPU, best of rounds):")
        for name, spent in parts.items():
            print(f"  {name:<22} {spent * 1e6:>6.2f} us")


if __name__ == "__main__":
    cli()
