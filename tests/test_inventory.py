"""The API inventory: classification, bounded memory, survival across reloads."""

from __future__ import annotations

import random
import sys
import textwrap
import tracemalloc
from pathlib import Path

from authz.engine import CompiledPolicy, PolicyEngine
from authz.inventory import HyperLogLog, Inventory, shared_inventory
from authz.model import Request
from authz.policy.config import RouteConfig
from authz.policy.loader import load_policy
from authz.stages import Shared

POLICY = """\
mode: enforce
providers:
  keys:
    type: api_key
    keys:
      - {id: a, sha256: 0b14b1d2ac5e2b5e6f8ab4bdb3fc1d5a5c1d3e9e3a4c6f5b1f9b6a7a0e1c2d3f, owner: team-a, scopes: [r], expires: "2999-01-01"}
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
  - {name: get-order, path: "/v1/orders/{id}", methods: [GET], providers: [keys], scopes: [r]}
"""


def engine(tmp_path: Path, text: str = POLICY, shared: Shared | None = None) -> PolicyEngine:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return PolicyEngine(CompiledPolicy(load_policy(path), shared=shared))


def test_hyperloglog_estimates_distinct_callers() -> None:
    for n in (0, 1, 5, 50, 500, 5000):
        hll = HyperLogLog()
        for i in range(n):
            hll.add(f"caller-{i}")
            hll.add(f"caller-{i}")  # repeats do not count
        estimate = hll.estimate()
        assert abs(estimate - n) <= max(1, 0.2 * n), (n, estimate)
    assert sys.getsizeof(HyperLogLog()._registers) < 400


async def test_declared_and_undeclared_are_classified(tmp_path: Path) -> None:
    e = engine(tmp_path)
    requests = [
        Request("GET", "/healthz", source_address="10.0.0.1"),
        Request("GET", "/healthz", source_address="10.0.0.2"),
        Request("GET", "/v1/orders/1"),  # declared, denied (no credential)
        Request("GET", "/v1/users/42?expand=1&x=2", source_address="10.0.0.1"),
        Request("GET", "/v1/users/43", source_address="10.0.0.3"),
        Request("GET", "/v1/users/0b7e3c1a-8f7d-4c0e-9a5b-1d2e3f4a5b6c", source_address="10.0.0.3"),
        Request("DELETE", "/v1/orders/7"),  # declared path, undeclared method: 405
        Request("GET", "/a%2fb"),  # unreadable: neither
    ]
    for r in requests:
        await e.check(r)
    view = shared_inventory(e.policy.shared).view()
    rows = {(x.declared, x.method, x.path): x for x in view.endpoints}
    assert set(rows) == {
        (True, "GET", "/healthz"),
        (True, "GET", "/v1/orders/{id}"),
        (False, "GET", "/v1/users/{id}"),
        (False, "DELETE", "/v1/orders/{id}"),
    }
    health = rows[(True, "GET", "/healthz")]
    assert (health.route, health.count, health.distinct_callers) == ("health", 2, 2)
    assert health.outcomes == (("allowed", 2),)
    users = rows[(False, "GET", "/v1/users/{id}")]
    assert (users.count, users.distinct_callers) == (3, 2)
    assert users.query_parameters == ("expand", "x")
    assert users.outcomes == (("undeclared_route", 3),)
    assert users.first_seen <= users.last_seen
    assert rows[(False, "DELETE", "/v1/orders/{id}")].outcomes == (("method_not_allowed", 1),)
    assert rows[(True, "GET", "/v1/orders/{id}")].outcomes == (("missing_credential", 1),)
    assert view.unrouted == 1
    # declared first, then by count
    assert [x.declared for x in view.endpoints] == [True, True, False, False]


async def test_inventory_survives_a_reload(tmp_path: Path) -> None:
    shared = Shared()
    first = engine(tmp_path, shared=shared)
    await first.check(Request("GET", "/shadow/1"))
    second = CompiledPolicy(load_policy(tmp_path / "policy.yaml"), shared=shared)
    first.swap(second)
    await first.check(Request("GET", "/shadow/2"))
    (row,) = [x for x in shared_inventory(shared).view().endpoints if not x.declared]
    assert (row.path, row.count) == ("/shadow/{id}", 2)


def test_memory_stays_bounded_under_a_flood_of_random_paths() -> None:
    inv = Inventory(capacity=512, rng=random.Random(7))
    route = RouteConfig(name="r", path="/r", methods=("GET",))
    rng = random.Random(1)
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    # a real shadow API, called regularly before and during the flood
    for _ in range(50):
        inv.undeclared("GET", "/internal/debug/dump", "addr:10.0.0.9", "undeclared_route")
    tracemalloc.start()
    for i in range(20_000):
        junk = "".join(rng.choice(alphabet) for _ in range(12))
        long_query = "&".join(f"p{j}{junk}=1" for j in range(40))
        inv.undeclared("GET", f"/{junk}/{'x' * 500}", f"addr:{i}", "undeclared_route", long_query)
        if i % 1000 == 0:
            inv.undeclared("GET", "/internal/debug/dump", "addr:10.0.0.9", "undeclared_route")
            inv.declared(route, "GET", f"addr:{i}", "allowed")
        if i == 5_000:
            baseline, _ = tracemalloc.get_traced_memory()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    view = inv.view()
    undeclared = [e for e in view.endpoints if not e.declared]
    assert len(undeclared) <= 512
    assert len(inv) <= 513
    assert view.evicted >= 20_000 - 512
    # the flood churned among itself; the endpoint really used is still there
    debug = [e for e in undeclared if e.path == "/internal/debug/dump"]
    assert debug and debug[0].count == 70
    # counts are conserved: kept + evicted = seen
    assert sum(e.count for e in undeclared) + view.evicted_requests == 20_000 + 70
    for e in undeclared:
        assert len(e.path) <= 260 and len(e.query_parameters) <= 32
    # memory after 20,000 distinct paths is what it was after 5,000 (give or take)
    assert current < baseline * 1.5 + 256 * 1024


def test_a_caller_with_a_lone_surrogate_is_counted_not_an_error() -> None:
    # transports decode bytes with surrogateescape, so such strings reach the sketch
    hll = HyperLogLog()
    hll.add("\udcff")
    hll.add("\ud800")
    assert hll.estimate() == 2
