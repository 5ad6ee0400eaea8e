"""The decision record: built once, frozen, the same object for every listener."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz.audit.sink import JsonLinesSink, MemorySink
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy
from authz.record import DecisionRecord, trace_context

POLICY = "routes:\n  - {name: ping, path: /ping, methods: [GET], public: true}\n"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Listener:
    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []

    def on_decision(self, record: DecisionRecord) -> None:
        self.records.append(record)


class Broken:
    def on_decision(self, record: DecisionRecord) -> None:
        raise RuntimeError("listener bug")


def engine(tmp_path: Path, sink: object, *listeners: object) -> PolicyEngine:
    (tmp_path / "p.yaml").write_text(POLICY)
    return PolicyEngine(
        CompiledPolicy(load_policy(tmp_path / "p.yaml")),
        sink=sink,  # type: ignore[arg-type]
        listeners=listeners,  # type: ignore[arg-type]
        clock=lambda: 1767225600.25,
    )


async def test_one_frozen_record_goes_to_every_listener(tmp_path: Path) -> None:
    sink, listener = MemorySink(), Listener()
    eng = engine(tmp_path, sink, Broken(), listener)
    request = Request(
        method="GET",
        path="/ping",
        source_address="203.0.113.7",
        request_id="rid-1",
        headers={"traceparent": TRACEPARENT},
    )
    decision = await eng.check(request)
    assert decision.allowed  # a broken listener does not change the decision
    [record] = listener.records
    assert sink.values == [record] and sink.values[0] is record
    assert isinstance(record, DecisionRecord)
    with pytest.raises(AttributeError):
        record.reason = "x"  # type: ignore[misc]
    assert record.client_address == "203.0.113.7"
    assert record.traceparent == TRACEPARENT
    assert record.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert record.request_id == "rid-1" and record.decision_id == decision.decision_id
    assert record.reason == "allowed" and sink.records[0]["reason"] == "allowed"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "x" * 55,
    ],
)
def test_an_invalid_traceparent_is_left_out(value: str | None) -> None:
    assert trace_context(value) == ("", "")


async def test_the_log_line_is_the_record_formatted_and_the_record_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonLinesSink(path=str(path)).open()
    listener = Listener()
    eng = engine(tmp_path, sink, listener)
    await eng.check(Request(method="GET", path="/ping", source_address="198.51.100.2"))
    sink.close()
    line = json.loads(path.read_text())
    [record] = listener.records
    assert line["time"] == "2026-01-01T00:00:00.250Z"
    assert record.time == 1767225600.25  # the writer formatted a copy
    assert line["latency_ms"] == round(record.latency_ms, 3)
    assert line["client_address"] == "198.51.100.2"
    assert line["traceparent"] == "" and line["trace_id"] == ""
    # the field names of the decision log, in order, then the new ones
    assert list(line) == [
        "time", "request_id", "decision_id", "route", "method", "path", "identity_type",
        "subject", "issuer", "decision", "status", "reason", "policy_version", "latency_ms",
        "client_address", "traceparent", "trace_id", "data_class",
    ]  # fmt: skip
    assert line["data_class"] == "public"  # the route's (public: true, so public)


CLASSED = """\
providers:
  dev: {type: jwt, issuer: "https://issuer.example", audiences: [api], discovery: true}
routes:
  - {name: ping, path: /ping, methods: [GET], public: true}
  - {name: notes, path: /notes, methods: [GET], providers: [dev], data_class: confidential}
"""


async def test_the_record_carries_the_route_data_class(tmp_path: Path) -> None:
    sink, listener = MemorySink(), Listener()
    (tmp_path / "p.yaml").write_text(CLASSED)
    eng = PolicyEngine(
        CompiledPolicy(load_policy(tmp_path / "p.yaml")),
        sink=sink,
        listeners=[listener],  # type: ignore[list-item]
    )
    await eng.check(Request(method="GET", path="/ping"))
    await eng.check(Request(method="GET", path="/notes"))  # no token: denied, still routed
    await eng.check(Request(method="GET", path="/elsewhere"))  # undeclared: no route
    got = [(r.route, r.data_class, r.decision) for r in listener.records]
    assert got == [("ping", "public", "allow"), ("notes", "confidential", "deny"),
                   ("", "", "deny")]  # fmt: skip
    assert DecisionRecord._fields[-1] == "data_class"  # the last field
    assert [r["data_class"] for r in sink.records] == ["public", "confidential", ""]
    counts = eng.metrics.value  # type: ignore[attr-defined]
    assert counts("authz_class_decisions_total", "public", "allow") == 1
    assert counts("authz_class_decisions_total", "confidential", "deny") == 1
    assert counts("authz_class_decisions_total", "", "deny") == 1
    assert counts("authz_class_decisions_total", "confidential", "allow") == 0
