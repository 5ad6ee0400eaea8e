"""The access-log feed: Envoy's HTTP log entries -> ResponseObservation (translation and
the join by decision id), the bounded queue, and publishing on the hub."""

from __future__ import annotations

import asyncio
import time

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2

from authz.detect.events import RESPONSE_HUB, ResponseHub, ResponseObservation
from authz.feedback.feed import FEED, ResponseFeed
from authz.stages import Shared
from authz.telemetry.metrics import MemoryMetrics
from authz.transport import envoy_als, envoy_http
from authz.transport.envoy_als import build_http_entry, to_observation


class Collect:
    def __init__(self) -> None:
        self.seen: list[ResponseObservation] = []

    def on_response(self, observation: ResponseObservation) -> None:
        self.seen.append(observation)


class Broken:
    def on_response(self, observation: ResponseObservation) -> None:
        raise RuntimeError("listener bug")


def _envoy_like_entry() -> accesslog_pb2.HTTPAccessLogEntry:
    """An entry as Envoy 1.40 fills it for a checked request (field by field)."""
    entry = accesslog_pb2.HTTPAccessLogEntry()
    common = entry.common_properties
    common.downstream_remote_address.socket_address.address = "203.0.113.9"
    common.downstream_remote_address.socket_address.port_value = 51234
    common.start_time.FromNanoseconds(1_796_000_000_250_000_000)
    common.time_to_last_rx_byte.FromNanoseconds(40_000)
    common.time_to_first_upstream_tx_byte.FromNanoseconds(2_000_000)  # after ext_authz
    common.time_to_last_upstream_tx_byte.FromNanoseconds(2_050_000)
    common.time_to_first_upstream_rx_byte.FromNanoseconds(9_000_000)
    common.time_to_last_upstream_rx_byte.FromNanoseconds(12_000_000)
    common.time_to_first_downstream_tx_byte.FromNanoseconds(9_100_000)
    common.time_to_last_downstream_tx_byte.FromNanoseconds(12_500_000)
    common.upstream_remote_address.socket_address.address = "10.0.0.2"
    common.upstream_cluster = "upstream"
    common.route_name = "get-order"
    meta = common.metadata.filter_metadata[envoy_als.EXT_AUTHZ_NAMESPACE].fields
    meta["decision_id"].string_value = "0190f1c2-aaaa"
    meta["subject"].string_value = "alice"
    entry.request.request_method = 1  # GET (envoy.config.core.v3.RequestMethod)
    entry.request.path = "/v1/orders/42?expand=items"
    entry.request.authority = "api.local"
    entry.response.response_code.value = 404
    entry.response.response_body_bytes = 321
    return entry


def test_translation_of_an_envoy_entry() -> None:
    obs = to_observation(_envoy_like_entry())
    assert obs == ResponseObservation(
        time=pytest.approx(1_796_000_000.25),  # type: ignore[arg-type]
        decision_id="0190f1c2-aaaa",
        route="get-order",
        method="GET",
        path="/v1/orders/42",  # no query: it may hold credentials or personal data
        client_address="203.0.113.9",
        status=404,
        bytes_sent=321,
        duration_ms=pytest.approx(12.5),  # type: ignore[arg-type]
        upstream_ms=pytest.approx(10.0),  # type: ignore[arg-type]
        response_flags="",
        upstream=True,
    )


def test_the_http_transport_key_joins_too() -> None:
    key = envoy_http.metadata_header("decision_id")
    assert key == "x-authz-meta-decision-id"
    entry = build_http_entry(
        path="/v1/orders/1", decision_id="d-http", metadata_key=key, tagged=False
    )
    assert to_observation(entry).decision_id == "d-http"


def test_the_tag_the_generated_config_asks_for_is_read_first() -> None:
    entry = build_http_entry(path="/v1/orders/1", decision_id="from-metadata", tagged=False)
    entry.common_properties.custom_tags[envoy_als.DECISION_ID_TAG] = "from-tag"
    assert to_observation(entry).decision_id == "from-tag"
    entry.common_properties.custom_tags[envoy_als.DECISION_ID_TAG] = ""  # Envoy: no value
    assert to_observation(entry).decision_id == "from-metadata"


def test_a_public_route_has_no_decision_id() -> None:
    entry = build_http_entry(path="/healthz", route="health")
    obs = to_observation(entry)
    assert (obs.decision_id, obs.route, obs.upstream) == ("", "health", True)


def test_an_entry_envoy_answered_itself() -> None:
    # ext_authz denied it (UAEX): no upstream timing, no upstream share
    entry = build_http_entry(
        path="/v1/orders/1", status=401, decision_id="d", upstream_ms=None,
        flags=("unauthorized_details",),
    )  # fmt: skip
    obs = to_observation(entry)
    assert (obs.upstream, obs.upstream_ms, obs.response_flags, obs.status) == (
        False, -1.0, "UAEX", 401,
    )  # fmt: skip


def test_flags_use_envoys_short_codes() -> None:
    flags = ("upstream_connection_failure", "no_healthy_upstream", "upstream_request_timeout")
    entry = build_http_entry(path="/x", status=503, flags=flags)
    assert set(to_observation(entry).response_flags.split(",")) == {"UF", "UH", "UT"}
    every = accesslog_pb2.ResponseFlags.DESCRIPTOR.fields
    assert {f.name for f in every} == set(envoy_als.RESPONSE_FLAG_CODES), "a flag has no code"


def test_an_empty_entry_reads_as_unknowns() -> None:
    obs = to_observation(accesslog_pb2.HTTPAccessLogEntry())
    assert (obs.decision_id, obs.status, obs.duration_ms, obs.upstream_ms, obs.path) == (
        "", 0, -1.0, -1.0, "",
    )  # fmt: skip
    assert abs(obs.time - time.time()) < 5  # no start time: when it arrived


def test_a_path_that_does_not_canonicalise_is_kept_raw_and_bounded() -> None:
    obs = to_observation(build_http_entry(path="/a%2Fb?q=1"))
    assert obs.path == "/a%2Fb"
    long = "/" + "x" * 10_000
    assert len(to_observation(build_http_entry(path=long)).path) == envoy_als.MAX_PATH


# -- the feed ----------------------------------------------------------------------------


def _feed(capacity: int = 8, batch: int = 4) -> tuple[ResponseFeed, Collect, MemoryMetrics]:
    metrics = MemoryMetrics()
    hub = ResponseHub()
    seen = Collect()
    hub.subscribe(seen)
    feed = ResponseFeed(hub, to_observation, metrics=metrics, capacity=capacity, batch=batch)
    return feed, seen, metrics


def test_feed_publishes_in_batches_and_counts_joins() -> None:
    feed, seen, metrics = _feed()
    entries = [build_http_entry(path=f"/v1/orders/{i}", decision_id=f"d{i}") for i in range(5)]
    entries.append(build_http_entry(path="/healthz"))
    assert feed.offer(entries) == 6
    assert feed.drain_batch() == 4  # one batch at a time
    assert feed.drain_batch() == 2
    assert [o.decision_id for o in seen.seen] == ["d0", "d1", "d2", "d3", "d4", ""]
    assert feed.counts == {"joined": 5, "public": 1, "dropped": 0, "invalid": 0}
    assert metrics.value("authz_feed_entries_total", "joined") == 5


def test_a_full_queue_drops_and_counts() -> None:
    feed, seen, _ = _feed(capacity=8)
    batch = [build_http_entry(path="/x", decision_id="d")] * 5
    assert feed.offer(batch) == 5
    assert feed.offer(batch) == 3  # what fits
    assert feed.offer(batch) == 0
    assert len(feed) == 8
    assert feed.counts["dropped"] == 7
    while feed.drain_batch():
        pass
    assert len(seen.seen) == 8


def test_an_entry_that_does_not_translate_is_counted_and_skipped() -> None:
    feed, seen, _ = _feed()
    feed.offer([object(), build_http_entry(path="/x", decision_id="d")])
    feed.drain_batch()
    assert feed.counts["invalid"] == 1
    assert [o.decision_id for o in seen.seen] == ["d"]


def test_a_broken_listener_does_not_stop_the_feed() -> None:
    feed, seen, _ = _feed()
    feed.hub.unsubscribe(seen)
    feed.hub.subscribe(Broken())
    feed.hub.subscribe(seen)
    feed.offer([build_http_entry(path="/x", decision_id="d")] * 2)
    feed.drain_batch()
    assert len(seen.seen) == 2


def test_the_feed_is_a_runtime_that_starts_nothing_when_built() -> None:
    shared = Shared()
    feed = ResponseFeed.of(shared, to_observation)
    assert feed is shared.get(FEED, lambda: None)
    assert feed.hub is shared.get(RESPONSE_HUB, ResponseHub)
    assert feed in shared.runtimes.pending
    assert feed._task is None  # built outside any event loop: nothing could start

    async def run() -> list[str]:
        await shared.runtimes.start()
        feed.offer([build_http_entry(path="/x", decision_id="a")])
        got = Collect()
        feed.hub.subscribe(got)
        for _ in range(50):
            if got.seen:
                break
            await asyncio.sleep(0.01)
        await shared.runtimes.aclose()
        return [o.decision_id for o in got.seen]

    assert asyncio.run(run()) == ["a"]
    assert feed._task is None


def test_the_drain_yields_between_batches() -> None:
    """A burst of entries lets other tasks (decisions) run between batches."""
    feed, seen, _ = _feed(capacity=100, batch=10)
    ticks: list[int] = []

    async def decisions() -> None:
        for _ in range(20):
            ticks.append(len(seen.seen))
            await asyncio.sleep(0)

    async def run() -> None:
        await feed.start()
        feed.offer([build_http_entry(path="/x", decision_id="d")] * 100)
        await asyncio.gather(decisions())
        for _ in range(100):
            if len(seen.seen) == 100:
                break
            await asyncio.sleep(0)
        await feed.aclose()

    asyncio.run(run())
    assert len(seen.seen) == 100
    # the other task saw the feed part-way through: it was not held up for all 100
    assert any(0 < t < 100 for t in ticks)


def test_rejects_a_feed_without_room() -> None:
    with pytest.raises(ValueError):
        ResponseFeed(ResponseHub(), to_observation, capacity=0)


def test_only_the_transport_knows_protobuf() -> None:
    """The feed and the shaper see plain tuples; the wire stays in authz/transport/."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "authz"
    for module in ("feedback/feed.py", "feedback/__init__.py", "ratelimit/adaptive.py",
                   "ratelimit/gradient.py"):  # fmt: skip
        tree = ast.parse((root / module).read_text())
        names = {
            alias.name if isinstance(node, ast.Import) else (node.module or "")
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert not {n for n in names if n.split(".")[0] in ("grpc", "google", "envoy")}, module


def test_the_forwarded_for_envoy_logged_is_kept() -> None:
    entry = build_http_entry(path="/healthz", route="health", client_address="10.0.0.1")
    entry.request.forwarded_for = "198.51.100.7, 10.0.0.1"
    obs = to_observation(entry)
    assert (obs.client_address, obs.forwarded_for) == ("10.0.0.1", "198.51.100.7, 10.0.0.1")
    assert to_observation(build_http_entry(path="/healthz")).forwarded_for == ""
