"""What detection costs per decision, scoring included, on both transports' hot paths.

One process, no sockets, as ``bench/profile_engine.py`` builds the paths:

- ``grpc``: CheckRequest bytes -> parse -> Request -> check -> CheckResponse bytes;
- ``http``: headers -> Request -> check -> HTTP response bytes;

for the benchmark's policy (``bench/fixtures.py``: ES256 JWTs, the example routes),
decision log to a file, and a mix of callers rather than one repeated request:
``--callers`` identities (each its own token and client address, over ``--callers``
addresses in four /16s), several routes (an order by id, the order list, the
export a reader may not have, a create with a read-only token, an undeclared
path, a request without a credential). Three arms, the same requests:

- ``without``: the policy alone;
- ``stage``: the policy with ``detection:`` (every detector at its defaults, monitor
  mode, honeypot paths), the scorer not draining (its queue emptied, untimed, after
  the round): what the request path pays;
- ``stage+scoring``: the same with the scorer draining the queue every ``--chunk``
  decisions, as it does every ~200 ms, its work *timed with the decisions*: what
  the process pays per decision, in the same process, same GIL (``scorer: inline``);
- ``process``: ``scorer: process`` (the default): the stage, and the batches shipped
  every ``--chunk`` decisions to the scoring child, timed with the decisions: what the
  serving process pays. The child's own CPU (it reports it in every answer, read
  once it has answered every batch, untimed) is printed beside it, and the sum of
  both against ``without``: what the machine pays.

Per decision, process CPU (``time.process_time``: every thread, the decision log's
writer included), over ``--rounds`` rounds of ``--calls`` decisions, the arms in
rotating order each round. Prints medians, the ratios to ``without`` (target: at
most 1.10) and the load average before and after.

    python bench/detect_cpu.py [--calls 2000] [--rounds 15] [--callers 1000]
    python bench/detect_cpu.py --before REV   # also REV's ``authz`` (git archive), one run

``--before`` runs this script against ``REV``'s package (extracted to a temporary
directory) and then against this tree, alternately ``--runs`` times, and prints both.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

DETECTION = """\
detection:
  scorer: inline
  mode: monitor
  detectors:
    honeypot: {paths: ["/.env", "/wp-login.php", "/admin/backup.zip", "/.git/**"]}
"""


#: the same section, scored in a child process (the default)
PROCESS = DETECTION.replace("scorer: inline", "scorer: process")


def _sync(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the check waited on I/O")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def requests(
    fx: Any, callers: int, calls: int, seed: int
) -> list[tuple[str, str, dict[str, str], str]]:
    """(method, path, headers, address) per decision: a seeded mix."""
    from bench import fixtures

    rng = random.Random(seed)
    tokens = [fx.mint(subject=f"user-{i}") for i in range(callers)]
    addresses = [f"10.{i % 4}.{(i // 4) // 250}.{(i // 4) % 250 + 1}" for i in range(callers)]
    out = []
    for _ in range(calls):
        i = rng.randrange(callers)
        token, address = tokens[i], addresses[i]
        roll = rng.random()
        method = "GET"
        auth: str | None = f"Bearer {token}"
        if roll < 0.55:
            path = f"/v1/orders/{rng.randrange(5000)}"
        elif roll < 0.75:
            path = "/v1/orders"
        elif roll < 0.83:
            path = "/v1/orders/export"  # 403: no orders:export
        elif roll < 0.90:
            method, path = "POST", "/v1/orders"  # 403: read-only token
        elif roll < 0.95:
            path = f"/v1/unknown/{rng.randrange(50)}"  # 404: undeclared
        else:
            path, auth = f"/v1/orders/{rng.randrange(5000)}", None  # 401: no credential
        headers = {
            "user-agent": "wrk",
            "accept": "*/*",
            "x-request-id": f"req-{rng.getrandbits(64):016x}",
            "x-forwarded-proto": "http",
            "host": fixtures.HOST,
        }
        if auth:
            headers["authorization"] = auth
        out.append((method, path, headers, address))
    return out


def paths(
    work: Path, text: str, mix: list[Any], tag: str
) -> tuple[dict[str, Callable[[int], Any]], Any, Any]:
    """Per transport, a function deciding request ``i`` of the mix; the scorer; the
    compiled policy (its runtimes started, unless its scorer is a process)."""
    from authz.engine import CompiledPolicy, PolicyEngine
    from authz.policy.loader import load_policy_bytes
    from authz.server import make_sink
    from authz.stages import Shared
    from authz.transport import envoy_grpc, envoy_http
    from authz.transport.http_wire import render
    from bench import fixtures

    shared = Shared()
    config = load_policy_bytes(text.encode(), source="bench.yaml", base_dir=work)
    policy = CompiledPolicy(config, shared=shared)
    if "scorer: process" not in text:  # a process scorer starts in the measuring loop
        asyncio.run(policy.start())
    engine = PolicyEngine(policy, sink=make_sink(str(work / f"decisions-{tag}.log")))
    check = engine.check
    wires = [
        envoy_grpc.build_check_request(
            method=m,
            path=p,
            host=fixtures.HOST,
            headers={**h, ":authority": fixtures.HOST, ":method": m, ":path": p},
            request_id=h["x-request-id"],
            source_address=a,
        ).SerializeToString()
        for m, p, h, a in mix
    ]
    source = getattr(envoy_http, "SOURCE_ADDRESS_HEADER", "x-authz-source-address")
    https = [(m, envoy_http.CHECK_PREFIX + p, {**h, source: a}) for m, p, h, a in mix]
    encode = getattr(envoy_grpc, "encode_check_response", None)
    if encode is None:

        def encode(d: Any) -> bytes:
            return bytes(envoy_grpc.to_check_response(d).SerializeToString())

    parse = envoy_grpc.CheckRequest.FromString
    to_grpc = envoy_grpc.to_request
    to_http, to_response = envoy_http.to_request, envoy_http.to_response

    def grpc_path(i: int) -> Any:
        return encode(_sync(check(to_grpc(parse(wires[i])))))

    def http_path(i: int) -> Any:
        method, target, headers = https[i]
        status, out, body = to_response(_sync(check(to_http(method, target, dict(headers), b""))))
        return render(status, out, body, close=False)

    scorer = shared.get("detect", lambda: None)
    return {"grpc": grpc_path, "http": http_path}, scorer, policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2_000, help="decisions per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--callers", type=int, default=1_000)
    parser.add_argument("--chunk", type=int, default=250, help="decisions between drains")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--before", help="also run a git revision's authz (one run)")
    parser.add_argument("--runs", type=int, default=1, help="with --before: runs of each")
    parser.add_argument("--label", default="this tree")
    args, rest = parser.parse_known_args(argv)
    if args.before:
        return before_after(args, rest)
    sys.path.insert(0, str(ROOT))
    from bench import fixtures

    print(f"== {args.label}: loadavg {loadavg()} at start")
    work = Path(tempfile.mkdtemp(prefix="authz-detect-cpu-"))
    fx = fixtures.make(work)
    mix = requests(fx, args.callers, args.calls, args.seed)
    text = fx.policy.read_text()
    from authz.policy.detection_config import DetectionConfig

    # a tree from before ``detection.scorer`` (--before) scores inline only
    has_process = "scorer" in DetectionConfig.__dataclass_fields__
    inline = DETECTION if has_process else DETECTION.replace("  scorer: inline\n", "")
    plain, _, _ = paths(work, text, mix, "plain")
    stage, scorer_a, _ = paths(work, text + inline, mix, "stage")
    scored, scorer_b, _ = paths(work, text + inline, mix, "scored")
    remote, scorer_c, remote_policy = paths(
        work, text + (PROCESS if has_process else inline), mix, "process"
    )
    assert scorer_a is not None and scorer_b is not None and scorer_c is not None
    n = len(mix)
    chunk = args.chunk

    def run_plain(fn: Callable[[int], Any]) -> float:
        started = time.process_time()
        for i in range(n):
            fn(i)
        return time.process_time() - started

    def run_stage(fn: Callable[[int], Any]) -> float:
        started = time.process_time()
        for i in range(n):
            fn(i)
        took = time.process_time() - started
        scorer_a.queue.clear()  # not draining: emptied untimed
        return took

    drained: dict[str, list[float]] = {}

    def run_scored(fn: Callable[[int], Any]) -> float:
        drain = scorer_b.drain
        clock = time.process_time
        scoring = 0.0
        started = clock()
        for start in range(0, n, chunk):
            for i in range(start, min(n, start + chunk)):
                fn(i)
            began = clock()
            drain()
            scoring += clock() - began
        took = clock() - started
        drained.setdefault(fn.__name__, []).append(scoring / n * 1e6)
        return took

    child_cpu: dict[str, list[float]] = {}
    child_metric = "authz_detect_scorer_cpu_seconds_total"

    async def run_process(fn: Callable[[int], Any]) -> float:
        """The serving process's CPU (the stage, and the batches shipped to the child,
        whose CPU is read separately: it reports its own in every answer)."""
        drain = scorer_c.drain
        metrics = remote_policy.shared.metrics
        before = metrics.value(child_metric)
        clock = time.process_time
        began = clock()
        for start in range(0, n, chunk):
            for i in range(start, min(n, start + chunk)):
                fn(i)
            drain()
            await asyncio.sleep(0)  # the loop writes the batch and reads answers: timed
        took = clock() - began
        while scorer_c.answered < scorer_c.batches:  # untimed: the child catches up
            await asyncio.sleep(0.001)
        child_cpu.setdefault(fn.__name__, []).append(
            (metrics.value(child_metric) - before) / n * 1e6
        )
        return took

    arms: list[tuple[str, dict[str, Callable[[int], Any]], Callable[[Callable[[int], Any]], Any]]]
    arms = [
        ("without", plain, run_plain),
        ("stage", stage, run_stage),
        ("stage+scoring", scored, run_scored),
    ]
    if has_process:
        arms.append(("process", remote, run_process))

    async def measure() -> dict[tuple[str, str], list[float]]:
        if has_process:
            await remote_policy.start()
            await remote_policy.shared.runtimes.start()  # the child starts in this loop
        results: dict[tuple[str, str], list[float]] = {}
        try:
            for _, built, runner in arms:  # warm: every token verified and cached
                for transport in ("grpc", "http"):
                    done = runner(built[transport])
                    if asyncio.iscoroutine(done):
                        await done
            child_cpu.clear()
            for r in range(args.rounds):
                order = arms[r % len(arms) :] + arms[: r % len(arms)]
                for transport in ("grpc", "http"):
                    for name, built, runner in order:
                        took = runner(built[transport])
                        if asyncio.iscoroutine(took):
                            took = await took
                        results.setdefault((transport, name), []).append(took / n * 1e6)
        finally:
            await remote_policy.shared.runtimes.aclose()
            await remote_policy.close()
        return results

    results = asyncio.run(measure())
    print(
        f"{n} decisions x {args.rounds} rounds per arm, {args.callers} callers, drain every "
        f"{chunk}; per decision, process CPU µs (median; ratio to without; fastest round)"
    )
    for transport in ("grpc", "http"):
        without = results[(transport, "without")]
        base, fastest = statistics.median(without), min(without)
        for name, _, _ in arms:
            values = results[(transport, name)]
            med = statistics.median(values)
            # a round's arms run back to back: their ratio is the least disturbed figure
            paired = statistics.median(v / w for v, w in zip(values, without, strict=True))
            print(
                f"{transport:4} {name:14} {med:7.2f} µs/decision  ratio {med / base:.3f}  "
                f"per-round ratio {paired:.3f}  "
                f"(fastest {min(values):6.2f}, ratio {min(values) / fastest:.3f})"
            )
        scoring = drained[f"{transport}_path"]
        print(
            f"{transport:4} the scorer's drains alone (within stage+scoring): "
            f"{statistics.median(scoring):.2f} µs/decision (fastest {min(scoring):.2f})"
        )
        if not has_process:
            continue
        child = child_cpu[f"{transport}_path"]
        total = [
            (v + c) / w
            for v, c, w in zip(results[(transport, "process")], child, without, strict=True)
        ]
        print(
            f"{transport:4} process: the child's scoring {statistics.median(child):.2f} "
            f"µs/decision beside it (on another core); serving + child per-round ratio "
            f"{statistics.median(total):.3f}"
        )
    if has_process:
        print(
            f"the process scorer shipped {scorer_c.batches} batches, "
            f"{scorer_c.answered} answered; {scorer_c.restarts} restarts"
        )
    print(f"loadavg {loadavg()} at end")
    return 0


def before_after(args: argparse.Namespace, rest: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="authz-detect-cpu-before-"))
    archive = work / "before.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "-o", str(archive), args.before, "authz"], check=True
    )
    shutil.unpack_archive(archive, work)
    (work / "bench").symlink_to(ROOT / "bench")
    common = [
        "--calls", str(args.calls), "--rounds", str(args.rounds), "--callers",
        str(args.callers), "--chunk", str(args.chunk), "--seed", str(args.seed), *rest,
    ]  # fmt: skip
    try:
        for _ in range(args.runs):
            for label, tree in ((f"before ({args.before})", work), ("after (this tree)", ROOT)):
                # the script from ``tree``'s bench/ (a link to this one) puts ``tree`` first
                script = tree / "bench" / "detect_cpu.py"
                done = subprocess.run(
                    [sys.executable, "-c", _RUN, str(tree), str(script), "--label", label, *common],
                    capture_output=True,
                    text=True,
                )
                print(done.stdout, end="")
                if done.returncode:
                    print(done.stderr, file=sys.stderr)
                    return done.returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


#: runs the script with ``argv[1]``'s package first on the path (not this tree's)
_RUN = (
    "import runpy, sys; tree = sys.argv[1]; sys.path.insert(0, tree); "
    "import bench.detect_cpu as m; m.ROOT = __import__('pathlib').Path(tree); "
    "sys.argv = sys.argv[2:]; raise SystemExit(m.main(sys.argv[1:]))"
)


if __name__ == "__main__":
    raise SystemExit(main())
