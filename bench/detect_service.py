"""Detection's per-decision CPU in the running service, on both transports, one run.

``bench/detect_cpu.py`` measures the hot paths in one process, without the gRPC
framework or the HTTP server around them; this script measures ``authz serve``
itself, under load, as Envoy would drive it:

- ``grpc``: h2load POSTs a CheckRequest to ``serve --grpc`` (as bench/run.py's E2);
- ``http``: wrk GETs the HTTP transport's check endpoint (as bench/run.py's F2);

for three policies: the benchmark's policy alone (``without``), the same with the
``detection:`` section of detect_cpu.py scored in a child process (``process``, the
default) and scored in the serving process (``inline``). Per request it reports
the CPU of the serving process alone and of its scoring child beside it (from
/proc), the ratios to ``without``, and requests/s. The arms alternate, ``--runs``
times each, on one machine in one run; medians are printed.

One token, one path: every request is the same caller, so the scorer's tables
hit the same entries (detect_cpu.py's mix of 1000 callers is the costlier case).

    python bench/detect_service.py [--duration 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fixtures
from bench.common import (
    Proc,
    cpu_seconds,
    free_port,
    grpc_frame,
    h2load,
    http_ok,
    process_tree,
    running,
    wait_until,
    wrk,
)
from bench.detect_cpu import DETECTION, PROCESS

ARMS = ("without", "process", "inline")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def serve(policy: Path, work: Path, name: str, transport: str, port: int) -> Proc:
    argv = [sys.executable, "-m", "authz", "serve", str(policy)]
    argv += (
        ["--grpc", f"127.0.0.1:{port}"] if transport == "grpc" else ["--http", f"127.0.0.1:{port}"]
    )
    argv += [
        "--decision-log", str(work / f"{name}.decisions.log"),
        "--reload-interval", "0", "--log-level", "warning", "--control", "off",
    ]  # fmt: skip
    return Proc(f"authz-{name}", argv, work / f"{name}.log")


def body_of(fx: fixtures.Fixture) -> bytes:
    from authz.transport.envoy_grpc import build_check_request

    headers = {
        "authorization": f"Bearer {fx.token}",
        "x-request-id": "5b0c3c5e-9f0e-4b39-8d7b-1f3a8c1d2e4f",
        ":authority": fixtures.HOST,
        ":method": "GET",
        ":path": fixtures.PATH,
    }
    message = build_check_request(
        method="GET", path=fixtures.PATH, host=fixtures.HOST, headers=headers,
        request_id=headers["x-request-id"], source_address="10.0.0.7",
    )  # fmt: skip
    return grpc_frame(message.SerializeToString())


def measure(
    fx: fixtures.Fixture, policy: Path, work: Path, arm: str, transport: str, args: Any
) -> dict[str, float]:
    port = free_port()
    name = f"{arm}-{transport}"
    proc = serve(policy, work, name, transport, port)
    with running(proc):
        if transport == "grpc":
            from authz.demo.stack import grpc_serving

            wait_until(name, lambda: grpc_serving(f"127.0.0.1:{port}"), 30, proc)
            url = f"http://127.0.0.1:{port}/envoy.service.auth.v3.Authorization/Check"
            body = body_of(fx)

            def drive(seconds: float) -> Any:
                return h2load(url, body=body, duration=seconds, clients=2, streams=32)
        else:
            wait_until(name, lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, proc)
            url = f"http://127.0.0.1:{port}/check{fixtures.PATH}"
            headers = {"authorization": f"Bearer {fx.token}", "host": fixtures.HOST}

            def drive(seconds: float) -> Any:
                return wrk(url, duration=seconds, connections=32, headers=headers)

        drive(args.warmup)
        root = proc.pid
        tree = process_tree(root)
        children = [p for p in tree if p != root]
        serving0, child0 = cpu_seconds([root]), cpu_seconds(children)
        load = drive(args.duration)
        serving, child = cpu_seconds([root]) - serving0, cpu_seconds(children) - child0
    n = max(1, load.requests)
    return {
        "serving_us": serving / n * 1e6,
        "child_us": child / n * 1e6,
        "rps": load.rps,
        "errors": float(load.errors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before it")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--transports", default="grpc,http")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="authz-detect-service-"))
    fx = fixtures.make(work)
    text = fx.policy.read_text()
    policies = {"without": fx.policy}
    for arm, section in (("process", PROCESS), ("inline", DETECTION)):
        path = work / f"policy-{arm}.yaml"
        path.write_text(text + section)
        policies[arm] = path
    print(f"loadavg {loadavg()} at start; {args.runs} runs x {args.duration:g} s per arm")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    transports = [t for t in args.transports.split(",") if t]
    for r in range(args.runs):
        order = ARMS[r % 3 :] + ARMS[: r % 3]
        for transport in transports:
            for arm in order:
                got = measure(fx, policies[arm], work, arm, transport, args)
                results.setdefault((transport, arm), []).append(got)
    for transport in transports:
        base = statistics.median(x["serving_us"] for x in results[(transport, "without")])
        print(f"{transport}: per request, CPU µs of the serving process (and its scoring child)")
        for arm in ARMS:
            runs = results[(transport, arm)]
            serving = statistics.median(x["serving_us"] for x in runs)
            child = statistics.median(x["child_us"] for x in runs)
            rps = statistics.median(x["rps"] for x in runs)
            errors = sum(x["errors"] for x in runs)
            print(
                f"  {arm:8} serving {serving:7.1f} µs  ratio {serving / base:.3f}   "
                f"child {child:5.1f} µs   serving+child ratio {(serving + child) / base:.3f}   "
                f"{rps:8.0f} req/s  errors {errors:.0f}"
            )
    print(f"loadavg {loadavg()} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
