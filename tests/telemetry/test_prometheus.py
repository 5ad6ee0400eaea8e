"""The Prometheus text format of the metrics seam, read back with prometheus_client's
parser (the reference reader): every kind, cumulative buckets, escaped labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from authz.control.servicer import counters_to_proto
from authz.telemetry.metrics import MemoryMetrics
from authz.telemetry.prometheus import descriptions_of, render


def parsed(metrics: MemoryMetrics) -> dict[str, object]:
    text = render(counters_to_proto(metrics), descriptions_of(metrics))
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_counters_gauges_histograms_round_trip() -> None:
    m = MemoryMetrics()
    m.counter("authz_x_total", "things counted", ("reason",)).labels("denied").inc(3)
    m.gauge("authz_depth", "a depth").labels().set(2.5)
    h = m.histogram("authz_lat_ms", "latency", ("decision",), (1, 5)).labels("allow")
    for v in (0.5, 1, 3, 9):
        h.observe(v)
    families = parsed(m)
    x = families["authz_x"]  # the parser drops a counter's _total from the family name
    assert x.type == "counter" and x.documentation == "things counted"  # type: ignore[attr-defined]
    (sample,) = x.samples  # type: ignore[attr-defined]
    assert (sample.name, sample.labels, sample.value) == ("authz_x_total", {"reason": "denied"}, 3)
    (depth,) = families["authz_depth"].samples  # type: ignore[attr-defined]
    assert depth.value == 2.5
    samples = {
        (s.name, s.labels.get("le", "")): s.value
        for s in families["authz_lat_ms"].samples  # type: ignore[attr-defined]
    }
    # le is "less than or equal": 1 counts in the le=1 bucket; buckets are cumulative
    assert samples[("authz_lat_ms_bucket", "1")] == 2
    assert samples[("authz_lat_ms_bucket", "5")] == 3
    assert samples[("authz_lat_ms_bucket", "+Inf")] == 4
    assert samples[("authz_lat_ms_count", "")] == 4
    assert samples[("authz_lat_ms_sum", "")] == 13.5


def test_label_values_are_escaped() -> None:
    m = MemoryMetrics()
    m.counter("authz_r_total", "r", ("route",)).labels('a"b\\c\nd').inc()
    (sample,) = parsed(m)["authz_r"].samples  # type: ignore[attr-defined]
    assert sample.labels == {"route": 'a"b\\c\nd'}


def test_nothing_registered_renders_nothing() -> None:
    assert render(counters_to_proto(MemoryMetrics())) == ""
