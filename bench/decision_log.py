"""Cost of the decision log on the request path, before vs after the bound (one run).

- ``before``: what ``emit`` was, ``collections.deque.append`` bound to the sink;
- ``emit``: the bounded ``JsonLinesSink.emit`` (a length compare, then append);
- ``ready+emit``: what the engine does per allow with ``on_failure: deny``;
- ``engine drop`` / ``engine deny``: a whole ``PolicyEngine.check`` of a public route,
  the decision log in each mode (the second adds ``ready()``).

The writer thread is parked (a long interval) while timing, so only the request-path
cost is measured; the queue is emptied between rounds and the collector paused while
timing. Rounds alternate between the cases; best of ``--rounds``.

    python bench/decision_log.py [--records N] [--rounds R]
    python bench/decision_log.py --stalled-pipe 150000   # RSS with a reader that never reads
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz.audit.sink import JsonLinesSink
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy

POLICY = """\
version: 1
decision_log: {on_failure: %s}
routes:
  - {name: ping, path: /ping, methods: [GET], public: true}
"""


def record(i: int) -> dict[str, Any]:
    return {"time": 1.0, "request_id": f"r-{i}", "status": 200, "latency_ms": 0.1}


def interleaved(
    cases: dict[str, tuple[Callable[[], None], Callable[[], None], int]], rounds: int
) -> dict[str, float]:
    """Best ns per record of each case; rounds alternate between the cases so that a
    busy machine slows them alike."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, (fn, reset, n) in cases.items():
            reset()
            gc.collect()
            gc.disable()  # the queued records would make the collector's passes the noise
            started = time.perf_counter_ns()
            fn()
            elapsed = time.perf_counter_ns() - started
            gc.enable()
            best[name] = min(best[name], elapsed / n)
            reset()
    return best


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stalled_pipe(n: int) -> None:
    """Decisions through the engine into a pipe nobody reads: RSS every n/3 decisions."""
    _, w = os.pipe()
    sink = JsonLinesSink(os.fdopen(w, "w", encoding="utf-8")).open()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "policy.yaml"
        path.write_text(POLICY % "drop")
        engine = PolicyEngine(CompiledPolicy(load_policy(path)), sink=sink)

    async def go() -> None:
        print(f"start: RSS {rss_mib():.1f} MiB")
        step = max(1, n // 3)
        for i in range(1, n + 1):
            await engine.check(Request(method="GET", path="/ping", host="h", request_id=f"r{i}"))
            if i % step == 0:
                s = sink.stats()
                print(
                    f"{i} decisions: RSS {rss_mib():.1f} MiB, held {s.depth}, "
                    f"dropped {s.dropped}, high-water {s.high_water}"
                )

    asyncio.run(go())
    os._exit(0)  # the writer is blocked on the pipe for good


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stalled-pipe", type=int, default=0, metavar="N")
    args = parser.parse_args()
    if args.stalled_pipe:
        stalled_pipe(args.stalled_pipe)
    n, rounds = args.records, args.rounds
    recs = [record(i) for i in range(n)]

    queue: collections.deque[dict[str, Any]] = collections.deque()
    old_emit = queue.append

    def before() -> None:
        for r in recs:
            old_emit(r)

    sink = JsonLinesSink(path="/dev/null", interval=3600, max_queue=n + 1).open()
    emit, ready = sink.emit, sink.ready

    def bounded() -> None:
        for r in recs:
            emit(r)

    def deny_path() -> None:
        for r in recs:
            if ready():
                emit(r)

    cases: dict[str, tuple[Callable[[], None], Callable[[], None], int]] = {
        "before (deque.append)": (before, queue.clear, n),
        "emit (bounded)": (bounded, sink._queue.clear, n),
        "ready+emit (deny)": (deny_path, sink._queue.clear, n),
    }

    class Before:
        """The sink as it was: emit is deque.append (unbounded)."""

        def __init__(self) -> None:
            self._queue: collections.deque[Any] = collections.deque()
            self.emit = self.on_decision = self._queue.append

        def ready(self) -> bool:
            return True

        def healthy(self) -> bool:
            return True

        def configure(self, **_: Any) -> None:
            return None

        def close(self) -> None:
            return None

        async def start(self) -> None:
            return None

        async def aclose(self) -> None:
            return None

    old_sink = Before()
    m = min(n, 50_000)
    with tempfile.TemporaryDirectory() as work:
        for label, mode, target in (
            ("engine check, before", "drop", old_sink),
            ("engine check, drop", "drop", sink),
            ("engine check, deny", "deny", sink),
        ):
            path = Path(work) / f"{mode}.yaml"
            path.write_text(POLICY % mode)
            engine = PolicyEngine(CompiledPolicy(load_policy(path)), sink=target)
            target.configure(max_queue=n + 1, block_ms=50, on_failure=mode)
            request = Request(method="GET", path="/ping", host="h", request_id="r")

            def decide(engine: PolicyEngine = engine, request: Request = request) -> None:
                async def go() -> None:
                    for _ in range(m):
                        await engine.check(request)

                asyncio.run(go())

            cases[label] = (decide, target._queue.clear, m)
        results = interleaved(cases, rounds)
    sink.close()

    print(f"{'path':<26} {'ns/record':>10} {'vs before':>10}")
    for name, ns in results.items():
        base = results[
            "engine check, before" if name.startswith("engine") else "before (deque.append)"
        ]
        print(f"{name:<26} {ns:>10.1f} {ns / base:>9.3f}x")
    print(
        f"bounded emit adds {results['emit (bounded)'] - results['before (deque.append)']:+.0f} ns"
        f" per decision; deny mode's ready() "
        f"{results['ready+emit (deny)'] - results['emit (bounded)']:+.0f} ns"
    )


if __name__ == "__main__":
    main()
