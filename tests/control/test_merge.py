"""Merging workers' answers (authz.control.merge): pure functions over the messages."""

from __future__ import annotations

from authz.control.merge import merge_counters, merge_inventories
from authz.inventory import HyperLogLog
from authz.v1 import admin_pb2


def sketch(*callers: str) -> bytes:
    hll = HyperLogLog()
    for caller in callers:
        hll.add(caller)
    return hll.registers


def endpoint(**fields: object) -> admin_pb2.Endpoint:
    outcomes = fields.pop("outcomes", {})
    e = admin_pb2.Endpoint(**fields)  # type: ignore[arg-type]
    for reason, n in outcomes.items():  # type: ignore[attr-defined]
        e.outcomes[reason] = n
    return e


def test_inventories_merge_by_endpoint() -> None:
    a = admin_pb2.Inventory(
        policy_version="v1", capacity=2048, evicted=1, evicted_requests=3, unrouted=2,
        started=100.0, generated=200.0, workers=1,
        endpoints=[
            endpoint(method="GET", path="/h", declared=True, route="h", count=3,
                     first_seen=110, last_seen=150, distinct_callers=2,
                     outcomes={"allowed": 3}, callers_sketch=sketch("a", "b")),
            endpoint(method="GET", path="/x/{id}", count=1, first_seen=120, last_seen=120,
                     distinct_callers=1, outcomes={"undeclared_route": 1},
                     query_parameters=["q"], callers_sketch=sketch("a")),
        ],
    )  # fmt: skip
    b = admin_pb2.Inventory(
        policy_version="v1", capacity=2048, evicted=0, evicted_requests=0, unrouted=5,
        started=90.0, generated=210.0, workers=1,
        endpoints=[
            endpoint(method="GET", path="/h", declared=True, route="h", count=4,
                     first_seen=100, last_seen=140, distinct_callers=2,
                     outcomes={"allowed": 3, "rate_limited": 1}, callers_sketch=sketch("b", "c")),
            endpoint(method="GET", path="/x/{id}", count=9, first_seen=115, last_seen=190,
                     distinct_callers=1, query_parameters=["r", "q"], callers_sketch=sketch("a")),
        ],
    )  # fmt: skip
    merged = merge_inventories([a, b])
    assert merged.workers == 2
    assert (merged.evicted, merged.evicted_requests, merged.unrouted) == (1, 3, 7)
    assert (merged.started, merged.generated, merged.capacity) == (90.0, 210.0, 2048)
    assert merged.policy_version == "v1"
    h, x = merged.endpoints  # declared first
    assert (h.path, h.count, h.first_seen, h.last_seen) == ("/h", 7, 100, 150)
    assert dict(h.outcomes) == {"allowed": 6, "rate_limited": 1}
    assert h.distinct_callers == 3  # a, b, c: the sketches' union, not 2 + 2
    assert (x.count, x.first_seen, x.last_seen, x.distinct_callers) == (10, 115, 190, 1)
    assert list(x.query_parameters) == ["q", "r"]


def test_inventories_of_workers_on_different_policies_say_so() -> None:
    a = admin_pb2.Inventory(policy_version="v1", workers=1)
    b = admin_pb2.Inventory(policy_version="v2", workers=1)
    assert merge_inventories([a, b]).policy_version == "v1,v2"
    assert merge_inventories([a, a]).policy_version == "v1"


def test_a_worker_without_a_sketch_gives_its_estimate() -> None:
    a = admin_pb2.Inventory(endpoints=[endpoint(method="GET", path="/", count=1,
                                                distinct_callers=5)])  # fmt: skip
    assert merge_inventories([a, a]).endpoints[0].distinct_callers == 5


def series(name: str, kind: str, labels: dict[str, str], **values: object) -> admin_pb2.Series:
    return admin_pb2.Series(
        name=name, kind=kind,
        labels=[admin_pb2.Header(name=k, value=v) for k, v in labels.items()],
        **values,  # type: ignore[arg-type]
    )  # fmt: skip


def test_counters_sum_by_name_and_labels() -> None:
    a = admin_pb2.Counters(workers=1, series=[
        series("authz_decisions_total", "counter", {"reason": "allowed"}, value=3),
        series("authz_decisions_total", "counter", {"reason": "undeclared_route"}, value=1),
        series("lat", "histogram", {}, count=2, sum=1.5, bounds=[1, 2], bucket_counts=[1, 1, 0]),
    ])  # fmt: skip
    b = admin_pb2.Counters(workers=1, series=[
        series("authz_decisions_total", "counter", {"reason": "allowed"}, value=4),
        series("lat", "histogram", {}, count=1, sum=3.0, bounds=[1, 2], bucket_counts=[0, 0, 1]),
    ])  # fmt: skip
    merged = merge_counters([a, b])
    assert merged.workers == 2
    got = {(s.name, tuple((h.name, h.value) for h in s.labels)): s for s in merged.series}
    assert got[("authz_decisions_total", (("reason", "allowed"),))].value == 7
    assert got[("authz_decisions_total", (("reason", "undeclared_route"),))].value == 1
    lat = got[("lat", ())]
    assert (lat.count, lat.sum, list(lat.bucket_counts)) == (3, 4.5, [1, 1, 1])


def test_merging_nothing_is_empty() -> None:
    assert len(merge_inventories([]).endpoints) == 0
    assert len(merge_counters([]).series) == 0
