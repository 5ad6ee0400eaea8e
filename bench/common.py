"""Shared pieces of the benchmarks: processes, CPU accounting, load generators.

Everything here talks only to 127.0.0.1. Load runs are bounded by duration.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(tool: str) -> str:
    found = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit(f"bench: {tool} is not installed; run bench/setup.sh first")
    return found


# ----------------------------------------------------------------------------- /proc


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (workers of ``authz serve --workers N``)."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes (all their threads), from /proc."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of one process in KiB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


class CpuMeter:
    """CPU seconds used by the process trees of ``roots`` between start and stop."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self._pids: list[int] = []
        self._start = 0.0

    def start(self) -> None:
        self._pids = [p for r in self.roots for p in process_tree(r)]
        self._start = cpu_seconds(self._pids)

    def stop(self) -> float:
        return cpu_seconds(self._pids) - self._start


# ----------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as fh:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen = None


def wait_until(what: str, probe: Callable[[], bool], timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{what} exited; see {proc.log}")
        with contextlib.suppress(Exception):
            if probe():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s; see {proc.log}")


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=2) as reply:
        return bool(reply.status == 200)


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        for p in procs:
            p.start()
        yield
    finally:
        for p in reversed(procs):
            p.stop()


# ----------------------------------------------------------------------------- load


_WRK_LUA = """
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50": %d, "p99": %d, "p999": %d, "mean": %f}\\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    summary.errors.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
"""


@dataclass
class Load:
    """One load run: throughput and latency (microseconds)."""

    requests: int
    seconds: float
    errors: int
    p50_us: float
    p99_us: float
    p999_us: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    headers: dict[str, str] | None = None,
) -> Load:
    """Drive ``url`` with wrk (HTTP/1.1 keep-alive) for ``duration`` seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_WRK_LUA)
        script = fh.name
    argv = [
        need("wrk"),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        script,
    ]
    for k, v in (headers or {}).items():
        # wrk keeps its own "Host" unless given that very spelling: a "host" beside it
        # would be a second Host header (refused as ambiguous, 400 host_ambiguous)
        argv += ["-H", f"{'Host' if k.lower() == 'host' else k}: {v}"]
    argv.append(url)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    finally:
        os.unlink(script)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    data = json.loads(line[len("WRKJSON ") :])
    return Load(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=data["errors"] + data["non2xx"],
        p50_us=data["p50"],
        p99_us=data["p99"],
        p999_us=data["p999"],
    )


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(
    url: str,
    *,
    body: bytes,
    duration: float,
    clients: int,
    streams: int,
    headers: dict[str, str] | None = None,
) -> Load:
    """Drive a gRPC method with h2load: POST ``body`` (a framed message) over HTTP/2."""
    work = Path(tempfile.mkdtemp(prefix="authz-h2load-"))
    try:
        data = work / "body.bin"
        data.write_bytes(body)
        log = work / "requests.log"
        argv = [
            need("h2load"),
            "-c",
            str(clients),
            "-m",
            str(streams),
            "-t",
            "1",
            "-D",
            str(max(1, round(duration))),
            "-d",
            str(data),
            "--log-file",
            str(log),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ]
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        argv.append(url)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        lat: list[int] = []
        bad = 0
        first = last = None
        with open(log) as fh:
            for line in fh:
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                start_us, status, elapsed = int(parts[0]), int(parts[1]), int(parts[2])
                if status != 200:
                    bad += 1
                    continue
                lat.append(elapsed)
                end = start_us + elapsed
                first = start_us if first is None else min(first, start_us)
                last = end if last is None else max(last, end)
        if not lat:
            raise RuntimeError(f"h2load: no successful requests\n{out.stdout}\n{out.stderr}")
        seconds = ((last or 0) - (first or 0)) / 1e6
        for line in out.stdout.splitlines():
            if line.startswith("requests:"):
                # "requests: N total, N started, N done, N succeeded, N failed, N errored"
                words = line.replace(",", "").split()
                bad += int(words[words.index("failed") - 1]) + int(
                    words[words.index("errored") - 1]
                )
        return Load(
            requests=len(lat),
            seconds=seconds,
            errors=bad,
            p50_us=percentile(lat, 50),
            p99_us=percentile(lat, 99),
            p999_us=percentile(lat, 99.9),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def percentile(values: list[int], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[index])


def median(values: Iterable[float]) -> float:
    items = list(values)
    return float(statistics.median(items)) if items else 0.0


# ----------------------------------------------------------------------------- machine


def _first(path: str, key: str) -> str:
    with contextlib.suppress(OSError), open(path) as fh:
        for line in fh:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return ""


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was at the start."""
    envoy = ""
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [need("envoy"), "--version"], capture_output=True, text=True, timeout=30
        )
        envoy = out.stdout.strip().split("version:")[-1].strip()
    versions = {}
    for tool, flag in (("wrk", "-v"), ("h2load", "--version")):
        with contextlib.suppress(Exception):
            out = subprocess.run([need(tool), flag], capture_output=True, text=True, timeout=10)
            versions[tool] = (out.stdout or out.stderr).strip().splitlines()[0]
    return {
        "cpu": _first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory": _first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": envoy,
        **versions,
        "loadavg_at_start": os.getloadavg(),
    }
