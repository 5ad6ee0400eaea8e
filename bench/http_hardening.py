"""The HTTP transport before and after its bounds, timeouts, cap and secret, side by side.

Two ``authz serve --http`` processes on the same policy: "before" runs the package
as it was at ``--before`` (a git revision, extracted to a temporary directory),
"after" runs this checkout. In one run, alternating:

- CPU per decision (wrk, keep-alive, an API-key check that is allowed): before;
  after; after with the transport secret on (wrk sends the header);
- memory: RSS while six connections each send 24 MB of an unfinished request line
  (the issue's attack), and after they are closed;
- idle connections: how many of 200 connections that never send anything the
  server has closed after the idle timeout (+2 s).

    python bench/http_hardening.py [--before REV] [--duration 5] [--runs 3] [--skip-load]

Prints a table and writes bench/results/http_hardening.md and .json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    RESULTS,
    ROOT,
    CpuMeter,
    Proc,
    free_port,
    http_ok,
    machine,
    median,
    rss_kib,
    wait_until,
    wrk,
)

KEY = "bench-key-0123456789abcdef"
SECRET = "b" * 64
POLICY = f"""\
mode: enforce
undeclared_routes: deny
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - id: k
        sha256: {hashlib.sha256(KEY.encode()).hexdigest()}
        owner: team
        scopes: [orders:read]
        expires: "2999-01-01"
routes:
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys],
     scopes: [orders:read]}}
"""
IDLE_TIMEOUT = 3.0
#: The last commit before the HTTP transport's bounds, timeouts, cap and secret.
BEFORE = "9e32136"


def _extract(rev: str, into: Path) -> Path:
    """The ``authz`` package as it was at ``rev``."""
    archive = into / "src.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "authz"], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "src", filter="data")
    return into / "src"


# Runs `authz` from the directory in argv[1]: an editable install's import hook
# would otherwise win over PYTHONPATH and both servers would run this checkout.
_LAUNCH = """\
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
src = sys.argv.pop(1)
sys.path.insert(0, src)
import authz
assert authz.__file__.startswith(src), authz.__file__
from authz.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _serve(name: str, src: Path, policy: Path, work: Path, *extra: str) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(
        name,
        [sys.executable, "-c", _LAUNCH, str(src), "serve", str(policy), "--http",
         f"127.0.0.1:{port}", "--decision-log", "off", "--log-level", "error", *extra],
        work / f"{name}.log",
    )  # fmt: skip
    proc.start()
    wait_until(name, lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, proc)
    return proc, port


def _cpu_per_request(proc: Proc, port: int, duration: float, secret: bool) -> dict[str, float]:
    headers = {"x-api-key": KEY, "host": "api.local"}
    if secret:
        headers["x-authz-transport-secret"] = SECRET
    meter = CpuMeter([proc.pid])
    meter.start()
    load = wrk(
        f"http://127.0.0.1:{port}/check/v1/orders/1",
        duration=duration,
        connections=50,
        headers=headers,
    )
    cpu = meter.stop()
    if load.errors:
        raise RuntimeError(f"{proc.name}: {load.errors} errors (non-2xx or socket)")
    return {
        "rps": load.rps,
        "cpu_us": cpu / max(1, load.requests) * 1e6,
        "p99_ms": load.p99_us / 1000,
    }


def _huge_lines(proc: Proc, port: int) -> dict[str, float]:
    """RSS before, while six connections hold 24 MB unfinished request lines, after."""
    base = rss_kib(proc.pid)[0]
    socks = []
    chunk = b"a" * 65536
    for _ in range(6):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(5)
        socks.append(s)
        try:
            s.sendall(b"GET /check/v1/orders/1?q=")
            for _ in range(24 * 16):  # 24 MB
                s.sendall(chunk)
        except OSError:
            pass  # the server answered and closed: the rest was never read
    time.sleep(0.5)
    during = rss_kib(proc.pid)[0]
    for s in socks:
        s.close()
    time.sleep(1.0)
    after = rss_kib(proc.pid)[0]
    return {"rss_before_mib": base / 1024, "rss_during_mib": during / 1024,
            "rss_after_mib": after / 1024}  # fmt: skip


def _held_heads(proc: Proc, port: int, count: int = 1000) -> dict[str, float]:
    """RSS before, while ``count`` connections each hold 60 KB of an unfinished header
    (within the 64 KiB bound), and 3 s after they are closed."""
    base = rss_kib(proc.pid)[0]
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /check/v1/orders/1 HTTP/1.1\r\nx-big: " + b"a" * 60000)
        socks.append(s)
    time.sleep(1.0)
    during = rss_kib(proc.pid)[0]
    for s in socks:
        s.close()
    time.sleep(3.0)
    after = rss_kib(proc.pid)[0]
    return {"rss_before_mib": base / 1024, "rss_during_mib": during / 1024,
            "rss_after_mib": after / 1024}  # fmt: skip


def _idle(port: int, count: int = 200) -> int:
    """How many of ``count`` silent connections the server closed by itself."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    time.sleep(IDLE_TIMEOUT + 2)
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    return closed


class _Sink:
    """A transport that only collects what is written (in-process measurement)."""

    def __init__(self) -> None:
        self.out = 0

    def write(self, data: bytes) -> None:
        self.out += 1

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass


def _old_transport_module(rev: str) -> Any:
    """authz.transport.http_server (and the envoy_http it imports) as at ``rev``."""
    import types

    def source(path: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip

    wire = types.ModuleType("_before_envoy_http")
    exec(compile(source("authz/transport/envoy_http.py"), "before/envoy_http.py", "exec"),
         wire.__dict__)  # fmt: skip
    sys.modules[wire.__name__] = wire
    text = source("authz/transport/http_server.py").replace(
        "from authz.transport.envoy_http import", f"from {wire.__name__} import"
    )
    module = types.ModuleType("_before_http_server")
    sys.modules[module.__name__] = module
    exec(compile(text, "before/http_server.py", "exec"), module.__dict__)
    return module


def _in_process(
    rev: str, policy: Path, calls: int, rounds: int, *, with_engine: bool
) -> dict[str, float]:
    """µs per decision through the transport's protocol object, no sockets: the
    same allowed check fed as bytes, before and after (with and without the secret),
    interleaved; best round of each. ``with_engine`` False: a stub engine answers the
    same ready decision, so only the transport is measured."""
    import asyncio

    from authz.audit.sink import NullSink
    from authz.engine import CompiledPolicy, PolicyEngine
    from authz.policy.loader import load_policy
    from authz.transport import http_server as after_module
    from authz.transport.http_connection import HttpConnection

    before_module = _old_transport_module(rev)
    raw = (
        f"GET /check/v1/orders/1 HTTP/1.1\r\nhost: api.local\r\nx-api-key: {KEY}\r\n"
        "x-request-id: r-1\r\ncontent-type: application/json\r\n"
        "x-forwarded-proto: https\r\n"
    )
    plain = (raw + "\r\n").encode()
    signed = (raw + f"x-authz-transport-secret: {SECRET}\r\n\r\n").encode()

    class _Fixed:
        """An engine that answers one ready decision: the transport's cost alone."""

        def __init__(self, decision: Any, metrics: Any) -> None:
            self.decision = decision
            self.metrics = metrics  # the transport binds its counters here

        async def check(self, request: Any) -> Any:
            return self.decision

    async def run() -> dict[str, float]:
        engine: Any = PolicyEngine(CompiledPolicy(load_policy(policy)), sink=NullSink())
        if not with_engine:
            from authz.transport.envoy_http import to_request

            headers = {"host": "api.local", "x-api-key": KEY}
            request = to_request("GET", "/check/v1/orders/1", headers, b"")
            engine = _Fixed(await engine.check(request), engine.metrics)
        variants = {
            "before": (before_module.HttpTransport(engine, "127.0.0.1:0"), before_module, plain),
            "after": (after_module.HttpTransport(engine, "127.0.0.1:0"), after_module, plain),
            "after+secret": (
                after_module.HttpTransport(engine, "127.0.0.1:0", secret=SECRET),
                after_module,
                signed,
            ),
        }
        best = {name: float("inf") for name in variants}
        for _ in range(rounds):
            for name, (server, module, data) in variants.items():
                sink = _Sink()
                connection: Any = getattr(module, "_Connection", HttpConnection)
                conn = connection(server)
                conn.connection_made(sink)
                started = time.process_time()
                for _ in range(calls):
                    conn.data_received(data)
                elapsed = time.process_time() - started
                assert sink.out == calls, (name, sink.out)
                conn.connection_lost(None)
                best[name] = min(best[name], elapsed / calls * 1e6)
        return best

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--before",
        default=BEFORE,
        help=f"git revision of the 'before' code (default {BEFORE}, the last without the bounds)",
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20000, help="in-process: per round")
    parser.add_argument("--rounds", type=int, default=7, help="in-process: best of")
    parser.add_argument("--skip-load", action="store_true", help="in-process figures only")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="authz-http-hardening-"))
    policy = work / "policy.yaml"
    policy.write_text(POLICY)
    secret = work / "secret"
    secret.write_text(SECRET + "\n")
    os.chmod(secret, 0o600)
    inproc = _in_process(args.before, policy, args.calls, args.rounds, with_engine=True)
    alone = _in_process(args.before, policy, args.calls, args.rounds, with_engine=False)
    lines = [
        f"# HTTP transport hardening, before ({args.before}) vs after",
        "",
        f"In process (request bytes -> protocol -> engine -> response bytes, no sockets; "
        f"best of {args.rounds} rounds of {args.calls:,} allowed API-key checks):",
        "",
        "| transport | µs/decision with the engine | vs before | transport alone | vs before |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {k} | {v:.2f} | {v / inproc['before']:.3f} | {alone[k]:.2f} | "
            f"{alone[k] / alone['before']:.3f} |"
            for k, v in inproc.items()
        ),
    ]
    result: dict[str, Any] = {
        "machine": machine(),
        "before": args.before,
        "in_process": inproc,
        "in_process_transport_alone": alone,
    }
    if not args.skip_load:
        lines += _load(args, policy, secret, work, result)
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http_hardening.md").write_text(text)
    (args.out / "http_hardening.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _load(
    args: argparse.Namespace, policy: Path, secret: Path, work: Path, result: dict[str, Any]
) -> list[str]:
    """The same servers as processes: wrk CPU per decision, RSS, idle connections."""
    before_src = _extract(args.before, work)
    procs: list[Proc] = []
    try:
        before, before_port = _serve("before", before_src, policy, work)
        procs.append(before)
        after, after_port = _serve(
            "after", ROOT, policy, work, "--http-idle-timeout", str(IDLE_TIMEOUT)
        )
        procs.append(after)
        guarded, guarded_port = _serve(
            "after+secret", ROOT, policy, work, "--http-secret-file", str(secret)
        )
        procs.append(guarded)
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": [], "after+secret": []}
        for _ in range(args.runs):  # alternate, so drifting load affects all alike
            runs["before"].append(_cpu_per_request(before, before_port, args.duration, False))
            runs["after"].append(_cpu_per_request(after, after_port, args.duration, False))
            runs["after+secret"].append(
                _cpu_per_request(guarded, guarded_port, args.duration, True)
            )
        cpu = {k: {m: median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
        memory = {
            "before": _huge_lines(before, before_port),
            "after": _huge_lines(after, after_port),
        }
        heads = {
            "before": _held_heads(before, before_port),
            "after": _held_heads(after, after_port),
        }
        idle = {"before": _idle(before_port), "after": _idle(after_port)}
    finally:
        for p in procs:
            p.stop()
    ratio = cpu["after"]["cpu_us"] / cpu["before"]["cpu_us"]
    ratio_secret = cpu["after+secret"]["cpu_us"] / cpu["before"]["cpu_us"]
    result.update(cpu=cpu, cpu_runs=runs, ratio=ratio, ratio_with_secret=ratio_secret,
                  memory=memory, held_heads=heads, idle_closed=idle)  # fmt: skip
    per_run = ", ".join(
        f"{a['cpu_us'] / b['cpu_us']:.2f}"
        for a, b in zip(runs["after"], runs["before"], strict=True)
    )
    return [
        "",
        f"`authz serve --http` processes, wrk -c50: {args.runs} alternating runs of "
        f"{args.duration:g} s, medians (server CPU from /proc):",
        "",
        "| server | req/s | CPU µs/decision | p99 ms |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {k} | {v['rps']:,.0f} | {v['cpu_us']:.1f} | {v['p99_ms']:.2f} |"
            for k, v in cpu.items()
        ),
        "",
        f"CPU per decision after/before: **{ratio:.3f}** (with the secret on: "
        f"{ratio_secret:.3f}); run by run: {per_run}.",
        "",
        "| server | RSS before | while 6 x 24 MB unfinished request lines | after closing |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {k} | {v['rss_before_mib']:.1f} MiB | {v['rss_during_mib']:.1f} MiB | "
            f"{v['rss_after_mib']:.1f} MiB |"
            for k, v in memory.items()
        ),
        "",
        "| server | RSS before | while 1000 x 60 KB unfinished headers | 3 s after closing |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {k} | {v['rss_before_mib']:.1f} MiB | {v['rss_during_mib']:.1f} MiB | "
            f"{v['rss_after_mib']:.1f} MiB |"
            for k, v in heads.items()
        ),
        "",
        f"Silent connections closed by the server after {IDLE_TIMEOUT + 2:g} s (of 200): "
        f"before {idle['before']}, after {idle['after']} (after: --http-idle-timeout "
        f"{IDLE_TIMEOUT:g}).",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
