"""What telemetry costs per decision in the running service, both transports, one run.

``authz serve`` under load, as bench/detect_service.py drives it (h2load POSTs a
CheckRequest to ``--grpc``; wrk GETs the HTTP transport's check endpoint), with four
arms:

- ``off``: no telemetry flag (the decision log only, as in every arm);
- ``metrics``: ``--metrics 127.0.0.1:PORT`` (the decision metrics are counted);
- ``trace1``: ``--otlp-endpoint --tracing --trace-sampling 0.01``;
- ``trace100``: ``--tracing --trace-sampling 1`` (every decision a span).

Then the same arms with the engine alone, in this process (``--calls``, no transport,
decision log off): CPU of the whole process per decision (``time.process_time``, the
batch processor's and exporter's threads included; the traced arms flush before the
clock stops), best of ``--rounds`` interleaved rounds. Less noise than the service
figures on a shared box; the same costs.

The requests carry no ``traceparent``, so the head ratio decides (with a parent, the
parent's flag would). Spans go through the SDK's BatchSpanProcessor and the OTLP gRPC
exporter to a real OTLP receiver in this process (it only counts them). Per request:
CPU µs of the serving process (all its threads, the exporter's included, from /proc),
the ratio to ``off``, requests/s, spans received. The arms alternate, ``--runs``
times each; medians are printed.

    python bench/telemetry_cost.py [--duration 5] [--runs 3] [--transports grpc,http]
        [--calls 20000] [--rounds 5]
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
from bench.common import Proc, cpu_seconds, free_port, h2load, http_ok, running, wait_until, wrk
from bench.detect_service import body_of, loadavg
from tests.telemetry.otlp_receiver import OtlpReceiver

ARMS = ("off", "metrics", "trace1", "trace100")


def arm_args(arm: str, endpoint: str) -> list[str]:
    if arm == "metrics":
        return ["--metrics", f"127.0.0.1:{free_port()}"]
    if arm.startswith("trace"):
        ratio = "0.01" if arm == "trace1" else "1"
        return ["--otlp-endpoint", endpoint, "--tracing", "--trace-sampling", ratio]
    return []


def serve(policy: Path, work: Path, name: str, transport: str, port: int, extra: list[str]) -> Proc:
    argv = [
        sys.executable,
        "-m",
        "authz",
        "serve",
        str(policy),
        f"--{transport}",
        f"127.0.0.1:{port}",
    ]
    argv += [
        "--decision-log", str(work / f"{name}.decisions.log"),
        "--reload-interval", "0", "--log-level", "warning", "--control", "off", *extra,
    ]  # fmt: skip
    return Proc(f"authz-{name}", argv, work / f"{name}.log")


def measure(
    fx: fixtures.Fixture, work: Path, arm: str, transport: str, rx: OtlpReceiver, args: Any
) -> dict[str, float]:
    port = free_port()
    name = f"{arm}-{transport}"
    proc = serve(fx.policy, work, name, transport, port, arm_args(arm, rx.endpoint))
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

        if args.warmup > 0:
            drive(args.warmup)
        spans0 = rx.span_count
        cpu0 = cpu_seconds([proc.pid])
        load = drive(args.duration)
        cpu = cpu_seconds([proc.pid]) - cpu0
        spans = rx.span_count - spans0  # (some still batched: counted in the next arm's)
    n = max(1, load.requests)
    return {"us": cpu / n * 1e6, "rps": load.rps, "errors": float(load.errors), "spans": spans}


def _sync(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the decision waited on I/O")


def in_process(fx: fixtures.Fixture, calls: int, rounds: int) -> None:
    """Per-decision process CPU of the engine alone, per arm (see the module doc). The
    receiver runs in a process of its own: its CPU is not this one's."""
    import signal
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tests.telemetry.otlp_receiver"],
        cwd=root, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None
        _in_process(fx, receiver.stdout.readline().strip(), calls, rounds)
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=10)


def _in_process(fx: fixtures.Fixture, endpoint: str, calls: int, rounds: int) -> None:
    import asyncio
    import time

    from authz.engine import CompiledPolicy, PolicyEngine
    from authz.policy.loader import load_policy
    from authz.server import make_sink
    from authz.stages import Shared
    from authz.telemetry.decisions import DecisionMetrics
    from authz.telemetry.metrics import MemoryMetrics
    from authz.telemetry.stages import StageLatency
    from authz.telemetry.tracing import DecisionTracer, build_processor
    from authz.transport import envoy_grpc

    policy = CompiledPolicy(load_policy(fx.policy))
    asyncio.run(policy.start())
    request = envoy_grpc.to_request(
        envoy_grpc.build_check_request(
            method="GET", path=fixtures.PATH, host=fixtures.HOST,
            headers={"authorization": f"Bearer {fx.token}", "x-request-id": "r"},
            request_id="r",
        )
    )  # fmt: skip
    engines: dict[str, Any] = {}
    processors: dict[str, Any] = {}
    for arm in ARMS:
        metrics = MemoryMetrics()
        listeners = [DecisionMetrics(metrics)] if arm == "metrics" else []
        compiled = policy
        if arm == "metrics":  # as the service builds it: each stage's step timed 1 in N
            shared = Shared()
            shared.step_probe = StageLatency(metrics).wrap
            compiled = CompiledPolicy(load_policy(fx.policy), shared=shared)
            asyncio.run(compiled.start())
        engine = PolicyEngine(compiled, sink=make_sink("off"), listeners=listeners, metrics=metrics)
        if arm.startswith("trace"):
            processors[arm] = build_processor(endpoint)
            ratio = 0.01 if arm == "trace1" else 1.0
            engine.tracer = DecisionTracer(processors[arm], ratio=ratio)
        assert _sync(engine.check(request)).allowed
        engines[arm] = engine
    best: dict[str, float] = {}
    for r in range(rounds):
        for arm in ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]:
            engine = engines[arm]
            # at 100%, flush before the queue's bound (8192) drops spans; at 1% the
            # batch processor exports on its own schedule, as in the service
            every = 1000 if arm == "trace100" else calls + 1
            t = time.process_time()
            for done in range(calls):
                _sync(engine.check(request))
                if done % every == every - 1:
                    processors[arm].force_flush()
            if arm in processors:
                processors[arm].force_flush()
            us = (time.process_time() - t) / calls * 1e6
            best[arm] = min(best.get(arm, us), us)
    for processor in processors.values():
        processor.shutdown()
    print(f"engine alone, in process: per decision, process CPU µs (best of {rounds})")
    for arm in ARMS:
        print(f"  {arm:9} {best[arm]:7.2f} µs  ratio {best[arm] / best['off']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before it")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--transports", default="grpc,http")
    parser.add_argument("--calls", type=int, default=20_000, help="per arm and round, in process")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="authz-telemetry-cost-"))
    fx = fixtures.make(work)
    transports = [t for t in args.transports.split(",") if t]
    print(f"loadavg {loadavg()} at start; {args.runs} runs x {args.duration:g} s per arm")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with OtlpReceiver(keep=False) as rx:
        for r in range(args.runs):
            order = ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]
            for transport in transports:
                for arm in order:
                    got = measure(fx, work, arm, transport, rx, args)
                    results.setdefault((transport, arm), []).append(got)
    if args.calls > 0:
        in_process(fx, args.calls, args.rounds)
    for transport in transports:
        base = statistics.median(x["us"] for x in results[(transport, "off")])
        print(f"{transport}: per decision, CPU µs of the serving process")
        for arm in ARMS:
            runs = results[(transport, arm)]
            us = statistics.median(x["us"] for x in runs)
            rps = statistics.median(x["rps"] for x in runs)
            errors = sum(x["errors"] for x in runs)
            spans = sum(x["spans"] for x in runs)
            print(
                f"  {arm:9} {us:7.1f} µs  ratio {us / base:.3f}  {rps:8.0f} req/s  "
                f"errors {errors:.0f}  spans received {spans:.0f}"
            )
    print(f"loadavg {loadavg()} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
