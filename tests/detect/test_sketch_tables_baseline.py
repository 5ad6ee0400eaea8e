"""Sketches, bounded tables and baselines: the primitives the detectors count with."""

from __future__ import annotations

from authz.detect.baseline import BucketedEwma, Ewma
from authz.detect.features import Sequence, Window, prefix_of
from authz.detect.sketch import EXACT, Distinct, HyperLogLog
from authz.detect.tables import LruTable
from authz.telemetry.metrics import MemoryMetrics


def test_distinct_is_exact_while_small_and_close_when_large() -> None:
    d = Distinct()
    for i in range(EXACT):
        assert d.add(f"a{i}")
        assert not d.add(f"a{i}")  # a repeat is not new
    assert len(d) == EXACT
    for n in (100, 1_000, 10_000):
        d = Distinct()
        for i in range(n):
            d.add(f"item-{i}")
            d.add(f"item-{i}")
        assert abs(len(d) - n) <= 0.35 * n, (n, len(d))  # p=7: 9% standard error
    d.clear()
    assert len(d) == 0


def test_hyperloglog_registers_stay_fixed() -> None:
    hll = HyperLogLog(7)
    for i in range(50_000):
        hll.add(str(i))
    assert len(hll.registers) == 128
    assert abs(hll.estimate() - 50_000) < 0.4 * 50_000


def test_a_table_never_holds_more_than_its_bound_and_counts_evictions() -> None:
    metrics = MemoryMetrics()
    table: LruTable[int] = LruTable("callers", 3, metrics)
    for i in range(3):
        table.get(f"k{i}", lambda i=i: i)  # type: ignore[misc]
    table.get("k0", lambda: -1)  # k0 is now the most recent
    table.get("k3", lambda: 3)  # evicts k1, the least recent
    assert "k1" not in table and "k0" in table and len(table) == 3
    for i in range(1000):
        table.put(f"x{i}", i)
    assert len(table) == 3
    assert metrics.value("authz_detect_evicted_total", "callers") == 1001
    table.resize(1)
    assert len(table) == 1


def test_ewma_learns_mean_and_variance() -> None:
    e = Ewma(0.1)
    for i in range(500):
        e.add(10.0 if i % 2 else 20.0)
    assert 14 < e.mean < 16
    assert 4 < e.std < 6


def test_bucketed_ewma_folds_quiet_buckets_as_zeros() -> None:
    b = BucketedEwma(10.0, 0.5, now=0.0, seed=5.0)
    for t in range(0, 100):  # one request a second: 10 per bucket
        b.add(float(t))
    b.roll(100.0)
    assert 9 < b.ewma.mean <= 10
    assert abs(b.per(60.0) - 6 * b.ewma.mean) < 1e-9
    b.roll(140.0)  # three quiet buckets
    assert b.ewma.mean < 2


def test_an_anomalous_bucket_cannot_teach_the_baseline_itself() -> None:
    b = BucketedEwma(10.0, 0.1, now=0.0, seed=2.0, floor=5.0)
    for t in range(30):  # 100 a second: 1000 per bucket
        for k in range(100):
            b.add(t + k / 100)
    b.roll(30.0)
    # three buckets folded at most max(3 x mean, floor) each: far below 1000
    assert b.ewma.mean < 10


def test_window_slides() -> None:
    w = Window(60.0, now=0.0)
    for t in range(60):
        w.add(float(t))
    assert w.value(59.0) == 60
    assert 25 < w.value(90.0) < 35  # half of the previous window still overlaps
    assert w.value(200.0) == 0


def test_sequence_runs_and_prefixes() -> None:
    s = Sequence()
    assert [s.add(str(i)) for i in (5, 6, 7, 9, 8, 7)] == [0, 1, 2, 0, 1, 2]
    assert [s.add(str(i)) for i in (20, 21, 20, 21, 20)] == [0, 1, 1, 1, 1]  # not a walk
    assert s.add("abc") == 1  # not numeric: the run is unchanged
    assert prefix_of("10.1.2.3") == "10.1.2.0/24"
    assert prefix_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert prefix_of("::ffff:10.1.2.3") == "10.1.2.0/24"
    assert prefix_of("") == "" and prefix_of("nonsense::x") == ""


def test_peek_bump_add_is_get_without_a_factory() -> None:
    metrics = MemoryMetrics()
    table: LruTable[int] = LruTable("t", 2, metrics)
    assert table.peek("a") is None
    table.add("a", 1)
    table.add("b", 2)
    assert table.peek("a") == 1
    table.bump("a")  # now most recent: "b" goes first
    table.add("c", 3)
    assert "b" not in table and table.peek("a") == 1 and table.peek("c") == 3
    assert len(table) == 2
    assert metrics.value("authz_detect_evicted_total", "t") == 1


def test_window_count_is_add_without_the_value() -> None:
    a, b = Window(10.0, 100.0), Window(10.0, 100.0)
    for now in (100.0, 101.0, 109.5, 112.0, 125.0, 125.5):
        a.add(now, 2.0)
        b.count(now, 2.0)
        assert a.value(now) == b.value(now)


def test_the_same_item_again_leaves_the_hyperloglog_as_it_was() -> None:
    d = Distinct()
    for i in range(EXACT + 200):
        d.add(f"item-{i}")
    before = len(d)
    assert not d.add("item-3") and len(d) == before
    reference = HyperLogLog()
    for i in range(EXACT + 200):
        reference.add(f"item-{i}")
    assert before == max(reference.estimate(), EXACT + 1)
