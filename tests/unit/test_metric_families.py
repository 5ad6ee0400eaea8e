"""Every counter is in the one metrics seam: after a representative run, each family
listed here exists, has its help string, and its series counted what happened.

The run goes through the engine with a policy that sheds, rate-limits in process and
against a Redis store that is down (a closed port), evicts in-process buckets and
inventory shapes; a decision log writes to a file and then to /dev/full. Everything
counts into the one ``Shared.metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from authz import devissuer
from authz.audit.sink import JsonLinesSink
from authz.demo.stack import free_port
from authz.engine import MAX_DECISION_SERIES, CompiledPolicy, PolicyEngine
from authz.inventory import Inventory
from authz.model import Request
from authz.policy.loader import load_policy
from authz.stages import Shared
from authz.telemetry.metrics import OTHER, MemoryMetrics

KEY = "key-a-0123456789abcdef"
SIGNER = devissuer.generate_key("ES256")
ISSUER = "https://issuer.example"
SHA = hashlib.sha256(KEY.encode()).hexdigest()

POLICY = f"""\
version: 1
providers:
  keys:
    type: api_key
    keys:
      - {{id: a, sha256: {SHA}, owner: team-a, scopes: [r], expires: "2999-01-01"}}
  corp: {{type: jwt, issuer: "{ISSUER}", audiences: [shop], algorithms: [ES256], jwks_file: {{jwks}}}}
rate_limits:
  max_keys: 16
  overload: {{signal_file: {{signal}}}}
  stores:
    down: {{type: redis, url: "redis://127.0.0.1:{{port}}/0", timeout: 100ms, retry_interval: 60s}}
  rules:
    - {{name: per-address, rate: 1/h, key: [client_address]}}
routes:
  - {{name: browse, path: /browse, methods: [GET], providers: [keys]}}
  - {{name: orders, path: /orders, methods: [GET], providers: [corp]}}
  - {{name: sync, path: /sync, methods: [GET], providers: [keys], priority: background}}
  - name: shared
    path: /shared
    methods: [GET]
    public: true
    priority: critical
    rate_limits:
      - {{name: remote, rate: 10/s, store: down, on_store_error: local}}
"""

#: (family, labels, at least): what the run below must have counted.
EXPECTED: list[tuple[str, tuple[str, ...], float]] = [
    ("authz_decisions_total", ("browse", "allow", "allowed"), 1),
    ("authz_decisions_total", ("unrouted", "deny", "rate_limited"), 1),  # a global rule
    ("authz_decisions_total", ("undeclared", "deny", "undeclared_route"), 1),
    ("authz_decision_outcomes_total", ("allow",), 1),
    ("authz_decision_outcomes_total", ("deny",), 1),
    ("authz_undeclared_total", (), 1),
    ("authz_class_decisions_total", ("internal", "allow"), 1),  # browse: the default class
    ("authz_class_decisions_total", ("internal", "deny"), 1),  # rate_limited
    ("authz_class_decisions_total", ("", "deny"), 1),  # undeclared: no route, no class
    ("authz_ratelimit_rule_total", ("per-address", "admitted"), 1),
    ("authz_ratelimit_rule_total", ("per-address", "limited"), 1),
    ("authz_ratelimit_rule_total", ("remote", "fell_back"), 3),
    ("authz_ratelimit_memory_evicted_total", ("live",), 1),
    ("authz_ratelimit_redis_calls_total", ("down",), 3),
    ("authz_ratelimit_redis_errors_total", ("down",), 3),
    ("authz_ratelimit_redis_outages_total", ("down",), 1),
    ("authz_ratelimit_redis_refused_total", ("down",), 1),
    ("authz_shed_total", ("background",), 1),
    ("authz_inventory_unrouted_total", (), 1),
    ("authz_inventory_evicted_total", (), 1),
    ("authz_inventory_evicted_requests_total", (), 1),
    ("authz_jwks_fetches_total", ("corp",), 1),
    ("authz_jwt_verifications_total", ("corp",), 1),
    ("authz_jwt_cache_hits_total", ("corp",), 1),
    ("authz_decision_log_emitted_total", (), 3),
    ("authz_decision_log_written_total", (), 2),
    ("authz_decision_log_write_failures_total", (), 1),
    ("authz_decision_log_dropped_total", ("unwritten_at_close",), 1),
]


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> MemoryMetrics:
    tmp = tmp_path_factory.mktemp("families")
    signal = tmp / "overload"
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(devissuer.jwks([SIGNER])))
    (tmp / "p.yaml").write_text(
        POLICY.replace("{signal}", str(signal))
        .replace("{port}", str(free_port()))
        .replace("{jwks}", str(jwks))
    )
    shared = Shared()
    m = shared.metrics
    assert isinstance(m, MemoryMetrics)
    # a small inventory, so that undeclared shapes are evicted
    shared.get("inventory", lambda: Inventory(capacity=2, metrics=m))
    sink = JsonLinesSink(path=str(tmp / "log"), interval=0.01, metrics=m)
    shared.runtimes.add(sink)  # started and closed with the others, as the service does
    policy = CompiledPolicy(load_policy(tmp / "p.yaml"), shared=shared)
    engine = PolicyEngine(policy, sink=sink)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(policy.start())
        loop.run_until_complete(shared.runtimes.start())
        token = devissuer.mint(SIGNER, issuer=ISSUER, subject="alice", audience="shop")

        def run(path: str, source: str = "192.0.2.1", **headers: str) -> None:
            loop.run_until_complete(
                engine.check(
                    Request(method="GET", path=path, headers=headers, source_address=source)
                )
            )

        run("/browse", **{"x-api-key": KEY})  # allowed
        run("/browse", **{"x-api-key": KEY})  # the same address again: rate_limited
        for source in ("192.0.2.2", "192.0.2.3"):  # verified, then from the cache
            run("/orders", source=source, authorization=f"Bearer {token}")
        for i in range(20):  # new addresses: the 16-key table evicts live buckets
            run("/shared", source=f"198.51.100.{i}")  # the Redis store is down: fell back
        for i in range(5):  # undeclared shapes: the 2-shape inventory evicts
            run(f"/nothing-{i}/here", source=f"203.0.113.{i}")
        run("/%zz", source="203.0.113.200")  # invalid path: unrouted
        signal.write_text("background")
        time.sleep(0.3)  # past the signal file's check interval
        run("/sync", source="203.0.113.201", **{"x-api-key": KEY})  # shed
        deadline = time.monotonic() + 10
        while sink.stats().written < sink.stats().emitted and time.monotonic() < deadline:
            time.sleep(0.01)
        sink._fd, sink._regular = os.open("/dev/full", os.O_WRONLY), False
        run("/browse", source="203.0.113.202")  # written to /dev/full: fails
        while not sink.stats().write_failures and time.monotonic() < deadline:
            time.sleep(0.01)
        loop.run_until_complete(policy.close())
        loop.run_until_complete(shared.runtimes.aclose())  # closes the sink too
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    return m


def test_the_run_lists_every_expected_family(metrics: MemoryMetrics) -> None:
    listed = sorted(metrics.families)
    assert {name for name, _, _ in EXPECTED} <= set(listed), listed


@pytest.mark.parametrize(
    ("family", "labels", "least"), EXPECTED, ids=[f"{name}{labels}" for name, labels, _ in EXPECTED]
)
def test_each_counter_counted(
    metrics: MemoryMetrics, family: str, labels: tuple[str, ...], least: float
) -> None:
    assert family in metrics.families, sorted(metrics.families)
    found = metrics.families[family]
    assert found.description, f"{family} has no help string"
    assert metrics.value(family, *labels) >= least, metrics.snapshot()[family]


def test_names_are_prometheus_style_and_label_sets_bounded(metrics: MemoryMetrics) -> None:
    for name, family in metrics.families.items():
        assert name.startswith("authz_"), name
        if family.kind == "counter":
            assert name.endswith("_total"), name
        forbidden = {"subject", "address", "path", "client_address", "ip", "user"}
        assert not forbidden & set(family.label_names), (name, family.label_names)
        assert len(family.series) <= 64 or name == "authz_ratelimit_rule_total"


def test_label_values_past_the_bound_fold_into_other() -> None:
    m = MemoryMetrics(max_series=8)
    family = m.counter("authz_test_total", "a test family", ("reason",))
    for i in range(100):  # far more distinct reasons than the bound
        family.labels(f"reason-{i}").inc()
    assert len(family.series) == 8
    assert m.value("authz_test_total", OTHER) == 100 - 7
    assert sum(m.snapshot()["authz_test_total"].values()) == 100  # nothing lost


async def test_engine_reason_and_rule_labels_stay_bounded(tmp_path: Path) -> None:
    """Route and rule names come from the policy; a reason the registry lacks, or a
    flood of them, folds into _other rather than growing the family."""
    m = MemoryMetrics(max_series=4)
    shared = Shared()
    shared.metrics = m
    (tmp_path / "p.yaml").write_text(
        "version: 1\nroutes:\n  - {name: open, path: /open, methods: [GET], public: true}\n"
    )
    engine = PolicyEngine(CompiledPolicy(load_policy(tmp_path / "p.yaml"), shared=shared))
    for path in ("/open", "/nope", "/%zz", "/open"):
        await engine.check(Request(method="GET", path=path, source_address="192.0.2.1"))
    family = m.families["authz_decisions_total"]
    for i in range(MAX_DECISION_SERIES + 50):
        family.labels("open", "deny", f"made-up-{i}").inc()
    assert len(family.series) == MAX_DECISION_SERIES  # its own bound: routes x reasons
    assert m.value("authz_decisions_total", OTHER, OTHER, OTHER) >= 50


def test_tables_show_their_size_against_their_bound(metrics: MemoryMetrics) -> None:
    """Read when the metrics are: nothing on the request path keeps them."""
    entries = {k[0]: v for k, v in metrics.snapshot()["authz_table_entries"].items()}
    capacity = {k[0]: v for k, v in metrics.snapshot()["authz_table_capacity"].items()}
    assert capacity["ratelimit_buckets"] == 16 and entries["ratelimit_buckets"] == 16  # full
    assert capacity["inventory_undeclared"] == 2 and entries["inventory_undeclared"] == 2
    assert entries["jwt_cache:corp"] == 1 and capacity["jwt_cache:corp"] > 1
    assert capacity["undeclared_shapes"] == 10_000 and 1 <= entries["undeclared_shapes"] <= 6
    assert set(entries) <= set(capacity)
