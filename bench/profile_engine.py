"""The hot path in one process, without sockets: what one decision costs in Python.

Times (µs per call, best of several rounds) for the benchmark's request (cached
token, template route, scope check):

- ``engine``: ``PolicyEngine.check`` alone, decision log to a file;
- ``grpc``: CheckRequest bytes -> parse -> Request -> check -> CheckResponse bytes;
- ``http``: headers -> Request -> check -> HTTP response bytes.

    python bench/profile_engine.py [--calls 20000] [--cpu] [--profile FILE]

``--cpu`` times with the process CPU clock (all threads: the decision log's writer
counts) rather than the wall clock, which on a shared machine also counts the time
other processes held the core.

``--profile`` also writes a pyinstrument profile of the gRPC path to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fixtures


def _sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits (a cached token) without an event loop turn."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the check waited on I/O; the token is not cached")


def build(work: Path, decision_log: str) -> dict[str, Callable[[], Any]]:
    from authz.engine import CompiledPolicy, PolicyEngine
    from authz.policy.loader import load_policy
    from authz.server import make_sink
    from authz.transport import envoy_grpc, envoy_http
    from authz.transport.http_wire import render

    fx = fixtures.make(work)
    policy = CompiledPolicy(load_policy(fx.policy))
    asyncio.run(policy.start())
    engine = PolicyEngine(policy, sink=make_sink(decision_log))
    headers = {
        "authorization": f"Bearer {fx.token}",
        "user-agent": "wrk",
        "accept": "*/*",
        "x-request-id": "5b0c3c5e-9f0e-4b39-8d7b-1f3a8c1d2e4f",
        "x-forwarded-proto": "http",
        ":authority": fixtures.HOST,
        ":method": "GET",
        ":path": fixtures.PATH,
    }
    check_request = envoy_grpc.build_check_request(
        method="GET",
        path=fixtures.PATH,
        host=fixtures.HOST,
        headers=headers,
        request_id=headers["x-request-id"],
    )
    wire = check_request.SerializeToString()
    request = envoy_grpc.to_request(check_request)
    http_headers = {k: v for k, v in headers.items() if not k.startswith(":")}
    http_headers["host"] = fixtures.HOST
    target = envoy_http.CHECK_PREFIX + fixtures.PATH
    decision = _sync(engine.check(request))
    assert decision.allowed, decision

    def engine_only() -> Any:
        return _sync(engine.check(request))

    encode = getattr(envoy_grpc, "encode_check_response", None)  # (older trees: absent)
    if encode is None:

        def encode(d: Any) -> bytes:
            return bytes(envoy_grpc.to_check_response(d).SerializeToString())

    def grpc_path() -> Any:
        parsed = envoy_grpc.CheckRequest.FromString(wire)
        return encode(_sync(engine.check(envoy_grpc.to_request(parsed))))

    def http_path() -> Any:
        req = envoy_http.to_request("GET", target, dict(http_headers), b"")
        status, out, body = envoy_http.to_response(_sync(engine.check(req)))
        return render(status, out, body, close=False)

    return {"engine": engine_only, "grpc": grpc_path, "http": http_path}


def timeit(
    fn: Callable[[], Any],
    calls: int,
    rounds: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = clock()
        for _ in range(calls):
            fn()
        best = min(best, (clock() - start) / calls)
    return best * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--decision-log", default="", help="default: a temporary file")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile here")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="time with the process's CPU clock (every thread, the decision log writer "
        "included; not the time the process waited for a core) instead of the wall clock",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="authz-profile-"))
    paths = build(work, args.decision_log or str(work / "decisions.log"))

    async def measure() -> dict[str, float]:
        # inside a running loop, as in the service (a due key set refresh needs one)
        clock = time.process_time if args.cpu else time.perf_counter
        return {name: timeit(fn, args.calls, clock=clock) for name, fn in paths.items()}

    results = asyncio.run(measure())
    if args.json:
        print(json.dumps({k: round(v, 2) for k, v in results.items()}))
    else:
        for name, us in results.items():
            print(f"{name:8} {us:7.2f} µs/call")
    if args.profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0001)
        fn = paths["grpc"]
        with profiler:
            for _ in range(args.calls):
                fn()
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        args.profile.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        print(f"profile written to {args.profile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
