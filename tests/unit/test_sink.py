"""Decision log sinks."""

from __future__ import annotations

import io
import json
from pathlib import Path

from authz.audit.sink import JsonLinesSink, MemorySink, NullSink


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
    sink = JsonLinesSink(path=str(path))
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
    sink = JsonLinesSink(path=str(path))
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
    sink = JsonLinesSink(path=str(path))
    sink.emit(record(1))
    sink.close()
    lines = path.read_text("utf-8").splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == {"old": True}


def test_stream_sink_is_not_closed(tmp_path: Path) -> None:
    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    for i in range(1000):
        sink.emit(record(i))
    sink.close()
    assert not stream.closed
    assert len(stream.getvalue().splitlines()) == 1000


def test_non_json_values_are_stringified(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonLinesSink(path=str(path))
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
