"""The metrics seam: bounded label sets, no-op and in-memory, and what folds into it."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy
from authz.telemetry.metrics import OTHER, MemoryMetrics, Metrics, NoopMetrics


def test_counters_gauges_histograms_in_memory() -> None:
    m = MemoryMetrics()
    hits = m.counter("hits_total", "hits", ("route",))
    a = hits.labels("a")
    a.inc()
    a.inc(2)
    assert hits.labels("a") is a  # bound once, the same handle after
    assert m.value("hits_total", "a") == 3
    with pytest.raises(ValueError):
        a.inc(-1)
    depth = m.gauge("depth", "queue depth").labels()
    depth.set(5)
    depth.dec()
    assert m.value("depth") == 4
    latency = m.histogram("latency_ms", "latency", buckets=(1, 10)).labels()
    for v in (0.5, 5, 50, 1):
        latency.observe(v)
    assert (latency.counts, latency.count, latency.sum) == ([2, 1, 1], 4, 56.5)
    # asking again returns the same family; another kind or labels is refused
    assert m.counter("hits_total", "hits", ("route",)) is hits
    with pytest.raises(ValueError):
        m.gauge("hits_total", "hits", ("route",))
    with pytest.raises(ValueError):
        hits.labels("a", "b")


def test_label_sets_past_the_bound_fold_into_other() -> None:
    m = MemoryMetrics(max_series=4)
    family = m.counter("by_path_total", "requests", ("path",))
    for i in range(100):
        family.labels(f"/p/{i}").inc()
    assert len(family.series) == 4
    assert m.value("by_path_total", OTHER) == 97
    assert family.folded == 97


def test_noop_records_nothing() -> None:
    m: Metrics = NoopMetrics()
    m.counter("x", "x", ("a",)).labels("1").inc()
    m.histogram("h", "h").labels().observe(1.0)
    m.gauge("g", "g").labels().set(1)


async def test_the_engine_counts_decisions_into_its_metrics(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "routes:\n  - {name: ping, path: /ping, methods: [GET], public: true}\n"
    )
    metrics = MemoryMetrics()
    engine = PolicyEngine(CompiledPolicy(load_policy(tmp_path / "p.yaml")), metrics=metrics)
    for path in ("/ping", "/ping", "/nope", "/%2e%2e/x"):
        await engine.check(Request(method="GET", path=path))
    assert metrics.value("authz_decisions_total", "ping", "allow", "allowed") == 2
    # no route matched: the fixed "undeclared", never the path; before routing: "unrouted"
    assert metrics.value("authz_decisions_total", "undeclared", "deny", "undeclared_route") == 1
    assert metrics.value("authz_decisions_total", "unrouted", "deny", "invalid_path") == 1
    assert metrics.value("authz_decision_outcomes_total", "deny") == 2
    assert metrics.value("authz_undeclared_total") == 1
    assert engine.decisions == {"allowed": 2, "undeclared_route": 1, "invalid_path": 1}


async def test_rate_limit_rules_count_into_the_process_metrics(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "rate_limits:\n  rules:\n    - {name: per-address, key: [client_address], rate: 2/m}\n"
        "routes:\n  - {name: ping, path: /ping, methods: [GET], public: true}\n"
    )
    policy = CompiledPolicy(load_policy(tmp_path / "p.yaml"))
    engine = PolicyEngine(policy)
    assert engine.metrics is policy.shared.metrics  # one per process, kept across reloads
    for _ in range(3):
        await engine.check(Request(method="GET", path="/ping", source_address="192.0.2.1"))
    metrics = engine.metrics
    assert isinstance(metrics, MemoryMetrics)
    assert metrics.value("authz_ratelimit_rule_total", "per-address", "admitted") == 2
    assert metrics.value("authz_ratelimit_rule_total", "per-address", "limited") == 1
    # a global rule decides before routing: "unrouted", not a route's name
    assert metrics.value("authz_decisions_total", "unrouted", "deny", "rate_limited") == 1
