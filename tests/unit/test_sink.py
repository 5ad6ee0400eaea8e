"""Decision log sinks."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import pytest

from authz.audit.sink import JsonLinesSink, MemorySink, NullSink
from tests.support import wait_for as wait_until


def record(i: int) -> dict[str, object]:
    return {
        "time": 1_800_000_000.0 + i,
        "request_id": f"req-{i}",
        "decision_id": f"dec-{i}",
        "route": "list-orders",
        "method": "GET",
        "path": "/v1/orders",
        "status": 200,
        "reason": "allowed",
        "note": 'caf\u00e9 "quoted"\nnew line',
    }


def test_json_lines_file_one_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonLinesSink(path=str(path)).open()
    for i in range(3):
        sink.emit(record(i))
    sink.close()
    lines = path.read_text("utf-8").splitlines()
    got = [json.loads(line) for line in lines]
    # the unix time is written as RFC 3339 (UTC, milliseconds); the rest as given
    assert [g["time"] for g in got] == [
        "2027-01-15T08:00:00.000Z",
        "2027-01-15T08:00:01.000Z",
        "2027-01-15T08:00:02.000Z",
    ]
    assert [{**g, "time": None} for g in got] == [{**record(i), "time": None} for i in range(3)]


def test_close_flushes_everything(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonLinesSink(path=str(path)).open()
    n = 10_000
    for i in range(n):
        sink.emit(record(i))
    sink.close()
    lines = path.read_text("utf-8").splitlines()
    assert len(lines) == n
    # in order, each a complete JSON object
    assert [json.loads(line)["request_id"] for line in lines] == [f"req-{i}" for i in range(n)]
    sink.close()  # closing twice is harmless


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_text('{"old": true}\n', "utf-8")
    sink = JsonLinesSink(path=str(path)).open()
    sink.emit(record(1))
    sink.close()
    lines = path.read_text("utf-8").splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == {"old": True}


def test_stream_sink_is_not_closed(tmp_path: Path) -> None:
    stream = io.StringIO()
    sink = JsonLinesSink(stream).open()
    for i in range(1000):
        sink.emit(record(i))
    sink.close()
    assert not stream.closed
    assert len(stream.getvalue().splitlines()) == 1000


def test_non_json_values_are_stringified(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonLinesSink(path=str(path)).open()
    sink.emit({"path": Path("/x"), "n": 1})
    sink.close()
    assert json.loads(path.read_text("utf-8")) == {"path": "/x", "n": 1}


def test_memory_and_null_sinks() -> None:
    memory = MemorySink()
    memory.emit(record(1))
    memory.close()
    assert memory.records == [record(1)]
    null = NullSink()
    null.emit(record(1))
    null.close()


# ------------------------------------------------------------------ bounds and failures
# Real mechanisms: an os.pipe() nobody reads, /dev/full (ENOSPC on every write), a
# closed stream, a pipe whose reader is gone (EPIPE). The small-tmpfs case (a disk that
# fills after some writes, then recovers) is in tests/integration/test_decision_log.py.


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def big_record(i: int) -> dict[str, object]:
    return {**record(i), "subject": f"user-{i}-" + "x" * 600, "latency_ms": 0.1234567}


class PipeReader:
    """The read end of a pipe, read (or not) by a thread on demand."""

    def __init__(self) -> None:
        self.r, w = os.pipe()
        self.stream = os.fdopen(w, "w", encoding="utf-8")
        self.data = bytearray()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def read() -> None:
            while chunk := os.read(self.r, 1 << 16):
                self.data += chunk

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def finish(self) -> list[str]:
        self.stream.close()
        assert self._thread is not None
        self._thread.join(10)
        os.close(self.r)
        return self.data.decode().splitlines()


def test_stalled_pipe_is_bounded_counted_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    pipe = PipeReader()  # nobody reads yet: the writer blocks once the pipe (64 KiB) is full
    sink = JsonLinesSink(pipe.stream, max_queue=2000, block_ms=20, stall_after=0.2).open()
    before = rss_kib()
    n = 150_000
    for i in range(n):
        sink.emit(big_record(i))
    grown_mib = (rss_kib() - before) / 1024
    s = sink.stats()
    # bounded: never more than max_queue held (queued + the batch in the blocked write)
    assert s.depth <= 2000 and s.high_water == 2000
    assert s.emitted == n and s.dropped == n - s.depth - s.written > 100_000
    assert grown_mib < 40, grown_mib  # unbounded, 150k such records hold ~150 MiB
    wait_until(lambda: not sink.healthy())  # the blocked write shows as a stall
    queue_full = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(queue_full) == 1 and not any(r.exc_info for r in caplog.records)
    pipe.start()  # the reader drains: the writer catches up and the sink recovers
    wait_until(sink.healthy)
    assert any("recovered" in r.getMessage() for r in caplog.records)
    for i in range(n, n + 100):
        sink.emit(big_record(i))
    sink.close()
    lines = pipe.finish()
    s = sink.stats()
    assert [json.loads(line)["request_id"] for line in lines[-100:]] == [
        f"req-{i}" for i in range(n, n + 100)
    ]
    assert s.written == len(lines) and s.written + s.dropped == s.emitted == n + 100
    summary = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    assert summary and f"{s.dropped} dropped" in summary[-1]


def test_dev_full_every_write_fails_counted_once_logged(caplog: pytest.LogCaptureFixture) -> None:
    sink = JsonLinesSink(path="/dev/full", interval=0.01, max_queue=100, block_ms=0).open()
    for i in range(150):
        sink.emit(record(i))
    wait_until(lambda: sink.stats().write_failures >= 3)  # retried, not once per record
    s = sink.stats()
    assert not sink.healthy() and not sink.ready()
    assert s.written == 0 and s.depth == 100 and s.dropped == 50
    sink.close()
    s = sink.stats()
    assert s.written == 0 and s.dropped == s.emitted == 150
    messages = [r.getMessage() for r in caplog.records]
    # one line for the failure episode, however many failed writes; no traceback
    assert sum("cannot write the decision log" in m for m in messages) == 1
    assert any("ENOSPC" in m for m in messages)
    assert not any(r.exc_info for r in caplog.records)


def test_a_closed_stream_is_a_counted_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "decisions.jsonl"
    stream = path.open("w", encoding="utf-8")
    sink = JsonLinesSink(stream, interval=0.01).open()
    for i in range(10):
        sink.emit(record(i))
    wait_until(lambda: sink.stats().written == 10)
    stream.close()  # someone closed it: its descriptor may be reused; never write to it
    for i in range(10, 15):
        sink.emit(record(i))
    wait_until(lambda: not sink.healthy())
    sink.close()
    s = sink.stats()
    assert (s.written, s.dropped, s.emitted) == (10, 5, 15)
    assert len(path.read_text("utf-8").splitlines()) == 10
    assert not any(r.exc_info for r in caplog.records)


def test_reader_gone_epipe_is_a_counted_failure(caplog: pytest.LogCaptureFixture) -> None:
    r, w = os.pipe()
    os.close(r)  # the reader is gone: every write is EPIPE (Python ignores SIGPIPE)
    stream = os.fdopen(w, "w", encoding="utf-8")
    sink = JsonLinesSink(stream, interval=0.01).open()
    for i in range(20):
        sink.emit(record(i))
    wait_until(lambda: sink.stats().write_failures >= 2)
    assert not sink.healthy()
    sink.close()
    stream.close()
    s = sink.stats()
    assert (s.written, s.dropped) == (0, 20)
    assert any("EPIPE" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)


def test_configure_changes_the_bound() -> None:
    pipe = PipeReader()
    sink = JsonLinesSink(pipe.stream, max_queue=50_000).open()
    sink.configure(max_queue=10, block_ms=0, on_failure="drop")
    for i in range(30_000):  # more than the pipe takes: the writer blocks, the queue fills
        sink.emit(big_record(i))
    assert sink.stats().depth <= 10
    pipe.start()
    sink.close()
    lines = pipe.finish()
    s = sink.stats()
    assert s.written == len(lines) and s.written + s.dropped == 30_000
    assert all(line.startswith("{") and line.endswith("}") for line in lines)


def test_a_cut_last_line_is_terminated_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_bytes(b'{"old":1}\n{"cut":')  # a crash mid-line, before this fix
    sink = JsonLinesSink(path=str(path)).open()
    sink.emit(record(1))
    sink.close()
    lines = path.read_text("utf-8").splitlines()
    assert lines[:2] == ['{"old":1}', '{"cut":'] and json.loads(lines[2])["request_id"] == "req-1"
