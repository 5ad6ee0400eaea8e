"""Which asyncio HTTP stack for the HTTP ext_authz transport? Measure before choosing.

Each candidate serves the same trivial ext_authz answer (read the request and its
Authorization header, answer 200 with three headers), in its own process, driven
by wrk over keep-alive connections from 127.0.0.1. Reported per candidate:
requests/s, p50/p99 latency and the server's CPU time per request (/proc).

    python bench/http_stacks.py [--duration 5] [--runs 3]

Writes bench/results/http_stacks.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    RESULTS,
    CpuMeter,
    Proc,
    free_port,
    http_ok,
    machine,
    median,
    running,
    wait_until,
    wrk,
)

CANDIDATES = {
    "httptools-uvloop": "raw asyncio.Protocol + httptools parser, uvloop event loop",
    "httptools-asyncio": "raw asyncio.Protocol + httptools parser, stdlib event loop",
    "aiohttp-uvloop": "aiohttp.web (3.x) handler, uvloop event loop",
    "aiohttp-asyncio": "aiohttp.web (3.x) handler, stdlib event loop",
}

_ANSWER = [("x-authz-subject", "alice"), ("x-authz-identity-type", "jwt")]


# ----------------------------------------------------------------------------- servers


def _serve_httptools(port: int) -> None:
    import httptools

    body = b""
    head = (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(f"{k}: {v}\r\n".encode() for k, v in _ANSWER)
        + b"content-length: 0\r\n\r\n"
        + body
    )

    class Conn(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.headers: dict[str, str] = {}
            self.transport: Any = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # (uvloop's is not an asyncio.Transport subclass)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_begin(self) -> None:
            self.headers = {}

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.decode("latin-1").lower()] = value.decode()

        def on_message_complete(self) -> None:
            self.headers.get("authorization")
            self.transport.write(head)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Conn, "127.0.0.1", port)
        await server.serve_forever()

    _run(main())


def _serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def check(request: web.Request) -> web.Response:
        request.headers.get("authorization")
        return web.Response(status=200, headers=dict(_ANSWER))

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", check)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    _run(main())


_USE_UVLOOP = False


def _run(coro: Any) -> None:
    if _USE_UVLOOP:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def serve(kind: str, port: int) -> None:
    global _USE_UVLOOP
    _USE_UVLOOP = kind.endswith("-uvloop")
    if kind.startswith("httptools"):
        _serve_httptools(port)
    elif kind.startswith("aiohttp"):
        _serve_aiohttp(port)
    else:
        raise SystemExit(f"unknown candidate {kind}")


# ----------------------------------------------------------------------------- driver


def measure(duration: float, runs: int, connections: int, work: Path) -> list[dict[str, Any]]:
    rows = []
    for kind, what in CANDIDATES.items():
        port = free_port()
        server = Proc(
            kind,
            [sys.executable, __file__, "serve", kind, str(port)],
            work / f"{kind}.log",
        )
        url = f"http://127.0.0.1:{port}/check/v1/orders/42"
        samples = []
        with running(server):
            wait_until(kind, lambda u=url: http_ok(u), 20, server)  # type: ignore[misc]
            wrk(url, duration=1, connections=connections)  # warm up
            for _ in range(runs):
                meter = CpuMeter([server.pid])
                meter.start()
                load = wrk(
                    url,
                    duration=duration,
                    connections=connections,
                    headers={"authorization": "Bearer x"},
                )
                cpu = meter.stop()
                samples.append(
                    {
                        "rps": load.rps,
                        "p50_us": load.p50_us,
                        "p99_us": load.p99_us,
                        "cpu_us_per_request": cpu / max(1, load.requests) * 1e6,
                        "errors": load.errors,
                    }
                )
        row: dict[str, Any] = {"candidate": kind, "what": what, "runs": samples}
        for key in ("rps", "p50_us", "p99_us", "cpu_us_per_request"):
            row[key] = median(s[key] for s in samples)
        rows.append(row)
        print(
            f"{kind:20} {row['rps']:>10,.0f} req/s  p99 {row['p99_us'] / 1000:6.2f} ms  "
            f"{row['cpu_us_per_request']:6.1f} us CPU/req",
            flush=True,
        )
    return rows


def write(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "http_stacks.json").write_text(
        json.dumps({"machine": meta, "results": rows}, indent=2) + "\n"
    )
    best = max(rows, key=lambda r: r["rps"])
    lines = [
        "# HTTP stacks for the ext_authz HTTP transport",
        "",
        f"Measured {meta['date']} with `{meta['command']}`: wrk, {meta['connections']} "
        f"keep-alive connections, {meta['duration']:g} s x {meta['runs']} runs, medians.",
        f"Machine: {meta['cpu']}, {meta['cores']} cores, load average at start "
        f"{meta['loadavg_at_start'][0]:.2f}.",
        "",
        "| candidate | req/s | p50 ms | p99 ms | CPU µs/request | vs best req/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['candidate']} ({r['what']}) | {r['rps']:,.0f} | {r['p50_us'] / 1000:.2f} | "
            f"{r['p99_us'] / 1000:.2f} | {r['cpu_us_per_request']:.1f} | "
            f"{r['rps'] / best['rps']:.2f} |"
        )
    lines += [
        "",
        "wrk runs on the same 2 cores, so the fastest candidates are partly limited by it;",
        "the CPU time per request is the fairer comparison.",
        "",
    ]
    (out / "http_stacks.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["serve"]:
        serve(args_in[1], int(args_in[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(args_in)
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="authz-stacks-"))
    meta = {
        **machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python bench/http_stacks.py " + " ".join(args_in),
        "duration": args.duration,
        "runs": args.runs,
        "connections": args.connections,
    }
    rows = measure(args.duration, args.runs, args.connections, work)
    write(rows, meta, args.out)
    print(f"written to {args.out}/http_stacks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
