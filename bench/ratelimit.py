"""Rate-limit benchmark: cost per decision of each store, accuracy, memory bound.

Standalone: starts its own redis-server (Debian's, on a free port) and its own
``authz serve`` processes; needs nothing else running. Prints three tables:

1. Cost per decision of each store relative to no limit, measured side by side
   in one run (the engine called directly, rounds interleaved, medians): wall
   time, this process's CPU, and redis-server's CPU per decision.
2. Accuracy: requests admitted vs the quota (burst + rate x elapsed), for the
   in-process store, exact Redis and batched Redis, with one and two
   ``authz serve`` replicas sharing the load.
3. Memory: 1,000,000 distinct keys through a table bounded at 100,000.

usage: python bench/ratelimit.py [--rounds N] [--decisions N] [--duration S] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from authz.audit.sink import NullSink  # noqa: E402
from authz.engine import CompiledPolicy, PolicyEngine  # noqa: E402
from authz.model import Request  # noqa: E402
from authz.policy.loader import load_policy  # noqa: E402
from authz.ratelimit.base import GCRA, Item  # noqa: E402
from authz.ratelimit.keys import SEPARATOR  # noqa: E402
from authz.ratelimit.memory import MemoryStore  # noqa: E402
from authz.stages import Shared  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: apt-get install redis-server (scripts/test does)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        proc.terminate()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


# --------------------------------------------------------------------------- 1. cost


COST_POLICY = """\
rate_limits:
  stores:
    shared: {{type: redis, url: "{url}", timeout: 1s, pool_size: 64}}
routes:
  - name: orders
    path: "/v1/orders/{{id}}"
    methods: [GET]
    public: true
{limits}"""

BIG = "rate: 1000000000/s, burst: 1000000000"  # never denies: the allow path is measured
COST_CONFIGS = {
    "no limit": "",
    "memory, 1 rule": f"    rate_limits: [{{name: m, {BIG}, key: [route]}}]\n",
    "memory, 3 rules": (
        "    rate_limits:\n"
        f"      - {{name: m1, {BIG}, key: [client_address]}}\n"
        f"      - {{name: m2, {BIG}, key: [route]}}\n"
        "      - {name: m3, concurrency: 1000000, lease: 1ms, key: [route]}\n"
    ),
    "redis, 1 rule": f"    rate_limits: [{{name: r, {BIG}, key: [route], store: shared}}]\n",
    "redis, 3 rules": (
        "    rate_limits:\n"
        f"      - {{name: r1, {BIG}, key: [client_address], store: shared}}\n"
        f"      - {{name: r2, {BIG}, key: [route], store: shared}}\n"
        "      - {name: r3, concurrency: 1000000, lease: 1ms, key: [route], store: shared}\n"
    ),
    "redis batched (batch 100), 1 rule": (
        f"    rate_limits: [{{name: b, {BIG}, key: [route], store: shared, batch: 100}}]\n"
    ),
}


def engine_for(tmp: Path, url: str, name: str, limits: str) -> tuple[PolicyEngine, Shared]:
    path = tmp / f"cost-{len(list(tmp.iterdir()))}.yaml"
    path.write_text(COST_POLICY.format(url=url, limits=limits))
    shared = Shared()
    return PolicyEngine(CompiledPolicy(load_policy(path), shared=shared), sink=NullSink()), shared


async def measure_cost(
    url: str, redis_pid: int, tmp: Path, rounds: int, decisions: int, concurrency: int
) -> dict[str, dict[str, float]]:
    engines = {name: engine_for(tmp, url, name, lim) for name, lim in COST_CONFIGS.items()}
    requests = [
        Request(method="GET", path=f"/v1/orders/{i}", source_address=f"10.0.{i % 250}.{i % 97}")
        for i in range(decisions)
    ]
    samples: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "cpu": [], "redis": []} for name in engines
    }

    async def run(engine: PolicyEngine) -> None:
        if concurrency == 1:
            for request in requests:
                decision = await engine.check(request)
                assert decision.allowed, decision.reason
            return
        for start in range(0, len(requests), concurrency):
            batch = requests[start : start + concurrency]
            results = await asyncio.gather(*(engine.check(r) for r in batch))
            assert all(d.allowed for d in results)

    for _, shared in engines.values():  # the stores the policies registered, as serve does
        await shared.runtimes.start()
    for engine, _ in engines.values():  # warm up: connections, scripts loaded, caches
        await run(engine)
    for _ in range(rounds):
        for name, (engine, _) in engines.items():  # interleaved: noise hits all alike
            wall, cpu, rcpu = time.perf_counter(), time.process_time(), cpu_seconds(redis_pid)
            await run(engine)
            n = len(requests)
            samples[name]["wall"].append((time.perf_counter() - wall) / n * 1e6)
            samples[name]["cpu"].append((time.process_time() - cpu) / n * 1e6)
            samples[name]["redis"].append((cpu_seconds(redis_pid) - rcpu) / n * 1e6)
    for _, shared in engines.values():
        await shared.runtimes.aclose()
    return {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}


def print_cost(results: dict[str, dict[str, float]], concurrency: int) -> None:
    base = results["no limit"]
    print(
        f"\n### Cost per decision, engine only, {concurrency} in flight "
        "(medians of interleaved rounds)\n"
    )
    print("| store | wall µs | CPU µs (authz) | CPU µs (redis-server) | CPU vs no limit |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        extra = r["cpu"] - base["cpu"]
        print(
            f"| {name} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['redis']:.1f} | "
            f"{r['cpu'] / base['cpu']:.2f}x (+{extra:.1f} µs) |"
        )


# --------------------------------------------------------------------------- 2. accuracy


RATE, BURST, BATCH = 100, 100, 20
ACCURACY_ROUTES = [
    # (route, store label, replicas, rule)
    ("mem1", "memory", 1, ""),
    ("mem2", "memory", 2, ""),
    ("exact1", "redis", 1, ", store: shared"),
    ("exact2", "redis", 2, ", store: shared"),
    ("batch1", f"redis batched ({BATCH})", 1, f", store: shared, batch: {BATCH}"),
    ("batch2", f"redis batched ({BATCH})", 2, f", store: shared, batch: {BATCH}"),
]


def accuracy_policy(url: str) -> str:
    lines = [
        "rate_limits:",
        "  stores:",
        f'    shared: {{type: redis, url: "{url}", timeout: 500ms, pool_size: 32}}',
        "routes:",
    ]
    for route, _, _, extra in ACCURACY_ROUTES:
        lines.append(
            f"  - {{name: {route}, path: /{route}, methods: [GET], public: true, rate_limits:"
            f" [{{name: {route}, rate: {RATE}/s, burst: {BURST}, key: [route]{extra}}}]}}"
        )
    return "\n".join(lines) + "\n"


class Serve:
    def __init__(self, policy: Path, tmp: Path) -> None:
        self.port = free_port()
        self.log = open(tmp / f"serve-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "authz", "serve", str(policy), "--grpc",
             f"127.0.0.1:{self.port}", "--decision-log", "off", "--reload-interval", "0",
             "--control", "off"],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            cwd=ROOT,
        )  # fmt: skip

    def wait(self) -> None:
        from authz.demo.stack import grpc_serving

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if grpc_serving(f"127.0.0.1:{self.port}", timeout=0.5):
                    return
            except Exception:
                time.sleep(0.1)
        sys.exit(f"authz serve on {self.port} did not become ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.log.close()


def drive(ports: list[int], route: str, seconds: float, threads: int) -> tuple[int, int, float]:
    """Send checks for ``seconds`` from ``threads`` threads, spread over the replicas.

    Returns (sent, admitted, elapsed from the first send to the last answer)."""
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    from authz.transport.envoy_grpc import build_check_request

    request = build_check_request(method="GET", path=f"/{route}", host="bench", headers={})
    counts = [0, 0]
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + seconds
    first_last = [float("inf"), 0.0]

    def work(index: int) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{ports[index % len(ports)]}")
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        sent = admitted = 0
        t0 = time.monotonic()
        while time.monotonic() < stop_at:
            reply = stub.Check(request, timeout=10)
            sent += 1
            admitted += reply.HasField("ok_response")
        t1 = time.monotonic()
        channel.close()
        with lock:
            counts[0] += sent
            counts[1] += admitted
            first_last[0] = min(first_last[0], t0)
            first_last[1] = max(first_last[1], t1)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return counts[0], counts[1], first_last[1] - first_last[0]


def measure_accuracy(url: str, tmp: Path, seconds: float, threads: int) -> list[tuple[str, ...]]:
    policy = tmp / "accuracy.yaml"
    policy.write_text(accuracy_policy(url))
    services = [Serve(policy, tmp), Serve(policy, tmp)]
    rows: list[tuple[str, ...]] = []
    try:
        for s in services:
            s.wait()
        for route, label, replicas, _ in ACCURACY_ROUTES:
            ports = [s.port for s in services[:replicas]]
            sent, admitted, elapsed = drive(ports, route, seconds, threads)
            quota = BURST + RATE * elapsed
            bound = quota + (replicas - 1) * BATCH if "batched" in label else quota
            rows.append(
                (
                    label,
                    str(replicas),
                    str(sent),
                    str(admitted),
                    f"{quota:.0f}",
                    f"{admitted / quota:.3f}",
                    f"{bound:.0f}"
                    if label != "memory"
                    else f"{quota * replicas:.0f} (1 per replica)",
                )
            )
    finally:
        for s in services:
            s.stop()
    return rows


def print_accuracy(rows: list[tuple[str, ...]], seconds: float) -> None:
    print(
        f"\n### Accuracy: {RATE}/s with a burst of {BURST}, one bucket, "
        f"{seconds:.0f} s of saturating load through `authz serve` (gRPC)\n"
    )
    print("| store | replicas | sent | admitted | quota | admitted / quota | documented bound |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        "\nquota = burst + rate x elapsed (what an exact limiter admits over the run). "
        "The in-process store limits each replica on its own; Redis shares one bucket."
    )


# --------------------------------------------------------------------------- 3. memory


def measure_memory(keys: int, max_keys: int) -> dict[str, float]:
    store = MemoryStore(max_keys=max_keys)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    for i in range(keys):
        address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        store.decide([Item(f"per-address{SEPARATOR}{address}", GCRA, 3600.0, 5)])
    elapsed = time.perf_counter() - started
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stats = store.stats()
    return {
        "keys sent": keys,
        "keys held": stats["keys"],
        "evicted (live)": stats["evicted_live"],
        "MB held": (current - base) / 1e6,
        "MB peak": (peak - base) / 1e6,
        "bytes per key": (current - base) / max(stats["keys"], 1),
        "µs per new key (tracemalloc on)": elapsed / keys * 1e6,
    }


def print_memory(result: dict[str, float], max_keys: int) -> None:
    print(f"\n### Memory: distinct keys into one in-process table bounded at {max_keys:,}\n")
    print("| " + " | ".join(result) + " |")
    print("|" + " ---: |" * len(result))
    print(
        "| " + " | ".join(f"{v:,.0f}" if v >= 100 else f"{v:.1f}" for v in result.values()) + " |"
    )


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--decisions", type=int, default=4000, help="per round and store")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per accuracy run")
    parser.add_argument("--threads", type=int, default=8, help="load threads (accuracy)")
    parser.add_argument("--keys", type=int, default=1_000_000, help="distinct keys (memory)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.decisions, args.duration, args.keys = 2, 300, 1.0, 20_000
    print(f"# authz rate-limit benchmark ({time.strftime('%Y-%m-%d %H:%M')})")
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.platform()}; redis-server from PATH"
    )
    with tempfile.TemporaryDirectory(prefix="authz-bench-rl-") as name:
        tmp = Path(name)
        with redis_server(tmp) as (url, redis_pid):
            for concurrency in (1, 32):
                cost = asyncio.run(
                    measure_cost(url, redis_pid, tmp, args.rounds, args.decisions, concurrency)
                )
                print_cost(cost, concurrency)
            rows = measure_accuracy(url, tmp, args.duration, args.threads)
            print_accuracy(rows, args.duration)
    max_keys = 100_000 if args.keys >= 100_000 else args.keys // 10
    print_memory(measure_memory(args.keys, max_keys), max_keys)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
