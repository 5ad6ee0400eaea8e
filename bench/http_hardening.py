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

    python bench/http_hardening.py [--before REV] [--duration 5] [--runs 3]

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
      - {{id: k, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, owner: team, scopes: [orders:read], expires: "2999-01-01"}}
routes:
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys], scopes: [orders:read]}}
"""
IDLE_TIMEOUT = 3.0


def _extract(rev: str, into: Path) -> Path:
    """The ``authz`` package as it was at ``rev``."""
    archive = into / "src.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "authz"], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "src", filter="data")
    return into / "src"


def _serve(name: str, src: Path, policy: Path, work: Path, *extra: str) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(
        name,
        [sys.executable, "-m", "authz", "serve", str(policy), "--http",
         f"127.0.0.1:{port}", "--decision-log", "off", "--log-level", "error", *extra],
        work / f"{name}.log",
        env={"PYTHONPATH": str(src)},
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="git revision of the 'before' code")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="authz-http-hardening-"))
    policy = work / "policy.yaml"
    policy.write_text(POLICY)
    secret = work / "secret"
    secret.write_text(SECRET + "\n")
    os.chmod(secret, 0o600)
    before_src = _extract(args.before, work)
    procs: list[Proc] = []
    try:
        before, before_port = _serve("before", before_src, policy, work)
        after, after_port = _serve(
            "after", ROOT, policy, work, "--http-idle-timeout", str(IDLE_TIMEOUT)
        )
        guarded, guarded_port = _serve(
            "after+secret", ROOT, policy, work, "--http-secret-file", str(secret)
        )
        procs = [before, after, guarded]
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": [], "after+secret": []}
        for _ in range(args.runs):  # alternate, so drifting load affects all alike
            runs["before"].append(_cpu_per_request(before, before_port, args.duration, False))
            runs["after"].append(_cpu_per_request(after, after_port, args.duration, False))
            runs["after+secret"].append(
                _cpu_per_request(guarded, guarded_port, args.duration, True)
            )
        cpu = {k: {m: median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
        memory = {"before": _huge_lines(before, before_port), "after": _huge_lines(after, after_port)}
        idle = {"before": _idle(before_port), "after": _idle(after_port)}
    finally:
        for p in procs:
            p.stop()
    ratio = cpu["after"]["cpu_us"] / cpu["before"]["cpu_us"]
    ratio_secret = cpu["after+secret"]["cpu_us"] / cpu["before"]["cpu_us"]
    lines = [
        f"# HTTP transport hardening, before ({args.before}) vs after",
        "",
        f"{args.runs} alternating runs of {args.duration:g} s, wrk -c50, medians.",
        "",
        "| server | req/s | CPU µs/decision | p99 ms |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {k} | {v['rps']:,.0f} | {v['cpu_us']:.1f} | {v['p99_ms']:.2f} |"
            for k, v in cpu.items()
        ),
        "",
        f"CPU per decision after/before: **{ratio:.3f}** (with the secret on: "
        f"{ratio_secret:.3f}).",
        "",
        "| server | RSS before | while 6 x 24 MB unfinished lines | after closing |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {k} | {v['rss_before_mib']:.1f} MiB | {v['rss_during_mib']:.1f} MiB | "
            f"{v['rss_after_mib']:.1f} MiB |"
            for k, v in memory.items()
        ),
        "",
        f"Silent connections closed by the server after {IDLE_TIMEOUT + 2:g} s (of 200): "
        f"before {idle['before']}, after {idle['after']} (after: --http-idle-timeout "
        f"{IDLE_TIMEOUT:g}).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http_hardening.md").write_text(text)
    result: dict[str, Any] = {
        "machine": machine(),
        "before": args.before,
        "cpu": cpu,
        "ratio": ratio,
        "ratio_with_secret": ratio_secret,
        "memory": memory,
        "idle_closed": idle,
    }
    (RESULTS / "http_hardening.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
