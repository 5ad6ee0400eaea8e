"""The decision log under faults, with real mechanisms: a small tmpfs that fills after
some writes and is then grown (the disk recovers), /dev/full, a stdout pipe nobody
reads; through the engine (``decision_log.on_failure: drop | deny``) and through
``authz serve --decision-log FILE``.

Every test asserts the log's invariants: no partial line is ever in the file, every
line parses as JSON, and ``written + dropped == emitted``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.audit.sink import JsonLinesSink
from authz.demo.stack import free_port
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Decision, Request
from authz.policy.loader import load_policy
from authz.transport.envoy_grpc import build_check_request
from tests.support import ServiceProcess
from tests.support import wait_for as wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: fills after a few hundred records; ``grow`` makes it recover."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def grow(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)


def assert_whole_lines(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), data[-200:]
    return [json.loads(line) for line in data.decode().splitlines()]  # each parses


def rec(i: int) -> dict[str, object]:
    return {"time": 1_800_000_000.0 + i, "request_id": f"req-{i}", "subject": "s" * 200}


# ----------------------------------------------------------------------- the sink on a disk


def test_disk_fills_no_partial_line_then_recovers_without_loss(small_disk: Path) -> None:
    path = small_disk / "decisions.jsonl"
    sink = JsonLinesSink(path=str(path), interval=0.01).open()
    n = 1500  # ~370 KB: six times what the disk holds
    for i in range(n):
        sink.emit(rec(i))
        if i % 100 == 99:
            time.sleep(0.02)  # several batches, so the disk fills mid-batch, not at once
    wait_until(lambda: not sink.healthy())
    # while the disk is full, the file ends at the last complete line
    full = assert_whole_lines(path)
    assert 0 < len(full) < n and sink.stats().write_failures >= 1
    grow(small_disk)
    wait_until(sink.healthy)
    sink.close()
    got = assert_whole_lines(path)
    s = sink.stats()
    # the queue was large enough: nothing dropped, all written once, in order
    assert (s.emitted, s.written, s.dropped) == (n, n, 0)
    assert [g["request_id"] for g in got] == [f"req-{i}" for i in range(n)]


def test_disk_full_with_a_small_queue_counts_every_drop(small_disk: Path) -> None:
    path = small_disk / "decisions.jsonl"
    sink = JsonLinesSink(path=str(path), interval=0.01, max_queue=300, block_ms=5).open()
    n = 3000
    for i in range(n):
        sink.emit(rec(i))
        if i % 100 == 99:
            time.sleep(0.02)
    wait_until(lambda: not sink.healthy())
    assert sink.stats().depth <= 300
    assert_whole_lines(path)
    grow(small_disk)
    wait_until(sink.healthy)
    sink.close()
    got = assert_whole_lines(path)
    s = sink.stats()
    assert s.emitted == n and s.dropped > 0 and s.written == len(got)
    assert s.written + s.dropped == s.emitted
    ids = [int(str(g["request_id"])[4:]) for g in got]
    assert ids == sorted(set(ids))  # each written once, in order


# ----------------------------------------------------------------------- through the engine

POLICY = """\
version: 1
decision_log: {on_failure: %s, max_queue: 200, block_ms: 5}
routes:
  - {name: ping, path: /ping, methods: [GET], public: true}
  - {name: watch, path: /watch, methods: [GET], public: true, mode: monitor}
"""


def engine_with(tmp_path: Path, on_failure: str, sink: JsonLinesSink) -> PolicyEngine:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY % on_failure)
    return PolicyEngine(CompiledPolicy(load_policy(path)), sink=sink)


async def decide(engine: PolicyEngine, path: str = "/ping") -> Decision:
    return await engine.check(Request(method="GET", path=path, host="h", request_id="r"))


class StalledPipe:
    """An os.pipe() that nobody reads until ``drain``."""

    def __init__(self) -> None:
        self.r, w = os.pipe()
        self.stream = os.fdopen(w, "w", encoding="utf-8")
        self.data = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        while chunk := os.read(self.r, 1 << 16):
            self.data += chunk

    def drain(self) -> None:
        self.thread.start()

    def lines(self) -> list[dict[str, object]]:
        self.stream.close()
        self.thread.join(10)
        os.close(self.r)
        assert not self.data or self.data.endswith(b"\n")
        return [json.loads(line) for line in self.data.decode().splitlines()]


async def test_stalled_pipe_on_failure_deny_denies_then_recovers(tmp_path: Path) -> None:
    pipe = StalledPipe()
    sink = JsonLinesSink(pipe.stream, interval=0.01).open()
    engine = engine_with(tmp_path, "deny", sink)
    decisions = []
    for _ in range(5000):  # the pipe holds ~64 KiB (~200 records), then the queue fills
        decisions.append(await decide(engine))
        if not decisions[-1].allowed:
            break
    denied = decisions[-1]
    assert (denied.allowed, denied.status, denied.reason) == (
        False,
        503,
        "decision_log_unavailable",
    )
    assert json.loads(denied.body) == {"error": "decision_log_unavailable", "request_id": "r"}
    assert ("retry-after", "1") in denied.response_headers
    assert sink.stats().depth <= 200
    # while it cannot take records, every decision is denied, monitor mode included
    for path in ("/ping", "/watch", "/ping"):
        assert (await decide(engine, path)).reason == "decision_log_unavailable"
    pipe.drain()
    wait_until(sink.ready)
    after = await decide(engine)
    assert after.allowed and after.reason == "allowed"
    sink.close()
    got = pipe.lines()
    s = sink.stats()
    assert s.emitted == len(decisions) + 4 and s.written == len(got)
    assert s.written + s.dropped == s.emitted
    assert got[-1]["reason"] == "allowed"  # the first decision after recovery is recorded


async def test_stalled_pipe_on_failure_drop_keeps_allowing(tmp_path: Path) -> None:
    pipe = StalledPipe()
    sink = JsonLinesSink(pipe.stream, interval=0.01).open()
    engine = engine_with(tmp_path, "drop", sink)
    n = 2000
    for _ in range(n):
        assert (await decide(engine)).allowed
    s = sink.stats()
    assert s.depth <= 200 and s.dropped > 1000 and not sink.healthy()
    pipe.drain()
    wait_until(sink.healthy)
    sink.close()
    got = pipe.lines()
    s = sink.stats()
    assert (s.emitted, s.written, s.written + s.dropped) == (n, len(got), n)


async def test_disk_full_on_failure_deny(tmp_path: Path) -> None:
    sink = JsonLinesSink(path="/dev/full", interval=0.01).open()
    engine = engine_with(tmp_path, "deny", sink)
    assert (await decide(engine)).allowed  # queued; the write has not failed yet
    wait_until(lambda: not sink.healthy())  # ENOSPC
    denied = await decide(engine)
    assert (denied.status, denied.reason) == (503, "decision_log_unavailable")
    sink.close()
    s = sink.stats()
    assert (s.emitted, s.written, s.dropped) == (2, 0, 2)


# ----------------------------------------------------------------------- authz serve

SERVE_POLICY = """\
version: 1
decision_log: {on_failure: deny, max_queue: 1000, block_ms: 10}
routes:
  - {name: ping, path: /ping, methods: [GET], public: true}
"""


def health_of(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def test_serve_disk_full_deny_health_and_recovery(tmp_path: Path, small_disk: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(SERVE_POLICY))
    log_file = small_disk / "decisions.jsonl"
    http_port = free_port()
    svc = ServiceProcess(
        policy, tmp_path, "--decision-log", str(log_file), "--http", f"127.0.0.1:{http_port}"
    ).wait_serving()
    try:
        assert health_of(svc.address, "authz.decision_log") == SERVING
        sent = 0
        with grpc.insecure_channel(svc.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)

            def ping() -> tuple[int, str]:
                nonlocal sent
                sent += 1
                reply = stub.Check(
                    build_check_request(method="GET", path="/ping", host="h", headers={}),
                    timeout=10,
                )
                if reply.HasField("ok_response"):
                    return 200, "allowed"
                d = reply.denied_response
                return d.status.code, json.loads(d.body)["error"]

            outcome = (200, "allowed")
            for _ in range(3000):  # ~64 KiB of records fill the disk
                outcome = ping()
                if outcome != (200, "allowed"):
                    break
            assert outcome == (503, "decision_log_unavailable")
            wait_until(lambda: health_of(svc.address, "authz.decision_log") == NOT_SERVING)
            wait_until(lambda: health_of(svc.address, "") == NOT_SERVING)  # on_failure: deny
            assert healthz(http_port) == 503
            assert_whole_lines(log_file)
            grow(small_disk)
            wait_until(lambda: health_of(svc.address, "") == SERVING)
            assert health_of(svc.address, "authz.decision_log") == SERVING
            assert healthz(http_port) == 200
            assert ping() == (200, "allowed")
    finally:
        assert svc.stop() == 0
    got = assert_whole_lines(log_file)
    stderr = svc.log()
    assert "Traceback" not in stderr
    assert stderr.count("cannot write the decision log") == 1, stderr
    assert "writable again" in stderr
    summary = re.search(r"(\d+) records emitted, (\d+) written, (\d+) dropped", stderr)
    assert summary is not None, stderr
    emitted, written, dropped = map(int, summary.groups())
    assert emitted == sent and written == len(got) and written + dropped == emitted
    assert got[-1]["reason"] == "allowed"


def test_serve_stdout_pipe_stalled_drop_then_drained(tmp_path: Path) -> None:
    """``--decision-log -`` into a pipe nobody reads: with on_failure: drop every request
    is still allowed, memory stays bounded (max_queue), the decision log's own health
    shows it while the overall stays SERVING; reading the pipe recovers it."""
    import subprocess as sp
    import sys

    policy = tmp_path / "policy.yaml"
    policy.write_text(SERVE_POLICY.replace("on_failure: deny", "on_failure: drop"))
    address = f"127.0.0.1:{free_port()}"
    stderr_path = tmp_path / "serve.log"
    with stderr_path.open("wb") as stderr:
        proc = sp.Popen(
            [sys.executable, "-m", "authz", "serve", str(policy), "--grpc", address,
             "--decision-log", "-", "--reload-interval", "0", "--control", "off"],
            stdout=sp.PIPE, stderr=stderr,
        )  # fmt: skip
        assert proc.stdout is not None
        out = bytearray()
        reader = threading.Thread(target=lambda: out.extend(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
        try:
            wait_until(lambda: _serving(address), timeout=30)
            sent = 0
            with grpc.insecure_channel(address) as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                for _ in range(1500):  # the pipe holds ~200 records, the queue 1000
                    reply = stub.Check(
                        build_check_request(method="GET", path="/ping", host="h", headers={}),
                        timeout=10,
                    )
                    sent += 1
                    assert reply.HasField("ok_response")
            wait_until(lambda: health_of(address, "authz.decision_log") == NOT_SERVING)
            assert health_of(address, "") == SERVING  # on_failure: drop
            reader.start()  # the consumer comes back
            wait_until(lambda: health_of(address, "authz.decision_log") == SERVING)
        finally:
            if reader.ident is None:
                reader.start()  # a failed test still lets the service exit
            proc.terminate()
            assert proc.wait(30) == 0
            reader.join(10)
    assert out.endswith(b"\n")
    got = [json.loads(line) for line in out.decode().splitlines()]
    text = stderr_path.read_text()
    assert "Traceback" not in text and "queue full" in text and "recovered" in text
    summary = re.search(r"(\d+) records emitted, (\d+) written, (\d+) dropped", text)
    assert summary is not None, text
    emitted, written, dropped = map(int, summary.groups())
    assert (emitted, written) == (sent, len(got)) and written + dropped == emitted
    assert dropped > 0


def _serving(address: str) -> bool:
    try:
        return health_of(address, "") == SERVING
    except grpc.RpcError:
        return False
