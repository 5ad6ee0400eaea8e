"""End to end: Envoy's gRPC access log comes back to authz, joined to each decision.

Real HTTP through a real Envoy (``authz envoy-config --access-log``) on both
transports. Each request's log entry becomes a ResponseObservation carrying the
upstream's own status (the echo upstream answers what ``x-echo-status`` asks) and the
decision id of the decision record; a public route, which Envoy does not send to
ext_authz, arrives too, with decision id "". First against the access-log server
running in this process (so the test can subscribe to its hub), then against the one
``authz serve --access-log-grpc`` runs, read through its control plane's counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.control.client import connect
from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from authz.detect.events import RESPONSE_HUB, ResponseHub, ResponseObservation
from authz.feedback.feed import ResponseFeed
from authz.stages import Shared
from authz.transport.als_server import AccessLogServer, serve_access_log
from authz.transport.envoy_als import DECISION_ID_TAG, to_observation
from authz.v1 import admin_pb2

pytestmark = pytest.mark.e2e

API_KEY = "feed-key-0123456789abcdef"

POLICY = f"""\
mode: enforce
undeclared_routes: deny
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {{id: k, sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}, owner: feed, scopes: [r], expires: "2999-01-01"}}
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys], scopes: [r]}}
"""


class InProcessAccessLog:
    """The real access-log server, feed and hub on an event loop in a thread."""

    def __init__(self) -> None:
        self.seen: list[ResponseObservation] = []
        #: decision id -> the custom tag of its raw entry (what the config asked Envoy for)
        self.tags: dict[str, str] = {}
        self.shared = Shared()
        self.server: AccessLogServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def on_response(self, observation: ResponseObservation) -> None:
        self.seen.append(observation)

    def start(self) -> InProcessAccessLog:
        self._thread.start()
        self.shared.get(RESPONSE_HUB, ResponseHub).subscribe(self)
        ResponseFeed.of(self.shared, self._translate)  # the one serve_access_log uses
        self.server = serve_access_log(self.shared, "127.0.0.1:0")
        self._run(self.shared.runtimes.start())
        return self

    def _translate(self, entry: Any) -> ResponseObservation:
        observation = to_observation(entry)
        self.tags[observation.decision_id] = entry.common_properties.custom_tags.get(
            DECISION_ID_TAG, ""
        )
        return observation

    def _run(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    def stop(self) -> None:
        self._run(self.shared.runtimes.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def wait_for(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def records(stack: LocalStack) -> list[dict[str, object]]:
    if not stack.decision_log.exists():
        return []
    return [json.loads(line) for line in stack.decision_log.read_text().splitlines() if line]


@pytest.fixture()
def als() -> Iterator[InProcessAccessLog]:
    server = InProcessAccessLog().start()
    yield server
    server.stop()


def _policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def _traffic(stack: LocalStack) -> None:
    base = stack.base_url
    key = {"x-api-key": API_KEY, "host": "api.local"}
    assert send("GET", f"{base}/v1/orders/7?expand=1", {**key, "x-echo-status": "404"})[0] == 404
    assert send("GET", f"{base}/v1/orders/8", {**key, "x-echo-delay-ms": "60"})[0] == 200
    assert send("GET", f"{base}/v1/orders/9", {"host": "api.local"})[0] == 401  # no key
    assert send("GET", f"{base}/healthz", {"host": "api.local", "x-echo-status": "503"})[0] == 503


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_every_request_comes_back_joined_to_its_decision(
    tmp_path: Path, als: InProcessAccessLog, transport: str
) -> None:
    assert als.server is not None
    with LocalStack(
        _policy(tmp_path), tmp_path / "state", transport=transport,
        access_log="external", access_log_port=als.server.port,
    ) as stack:  # fmt: skip
        _traffic(stack)
        wait_for(lambda: len(als.seen) >= 4 and len(records(stack)) >= 3)
        by_id = {o.decision_id: o for o in als.seen if o.decision_id}
        decided = {str(r["path"]): r for r in records(stack)}

        not_found = by_id[str(decided["/v1/orders/7"]["decision_id"])]
        assert (not_found.status, not_found.route, not_found.path) == (
            404,
            "get-order",
            "/v1/orders/7",
        )
        assert not_found.upstream and not_found.upstream_ms >= 0 and not_found.bytes_sent > 0
        assert not_found.client_address == "127.0.0.1" and not_found.method == "GET"

        slow = by_id[str(decided["/v1/orders/8"]["decision_id"])]
        assert (
            slow.status == 200 and slow.upstream_ms >= 60 and slow.duration_ms >= slow.upstream_ms
        )

        denied = by_id[str(decided["/v1/orders/9"]["decision_id"])]  # Envoy answered it
        assert (denied.status, denied.upstream) == (401, False)
        assert "UAEX" in denied.response_flags

        (public,) = [o for o in als.seen if o.path == "/healthz"]
        assert (public.decision_id, public.route, public.status, public.upstream) == (
            "", "health", 503, True,
        )  # fmt: skip
        assert "/healthz" not in decided  # never seen by ext_authz: only through the feed
        # the generated config has Envoy log the id as a tag of its own (the fast path)
        assert all(als.tags[i] == i for i in by_id) and als.tags[""] == ""


def test_the_service_serves_the_feed_itself(tmp_path: Path) -> None:
    with LocalStack(
        _policy(tmp_path), tmp_path / "state", transport="grpc", access_log="service"
    ) as stack:
        _traffic(stack)

        def feed_counts() -> dict[str, float]:
            with connect(f"127.0.0.1:{stack.control_port}") as admin:
                reply = admin.call(
                    "GetCounters", admin_pb2.GetCountersRequest(prefix="authz_feed_entries")
                )
            return {s.labels[0].value: s.value for s in reply.series}

        wait_for(
            lambda: feed_counts().get("joined", 0) >= 3 and feed_counts().get("public", 0) >= 1
        )
        counts = feed_counts()
        assert counts.get("dropped", 0) == 0 and counts.get("invalid", 0) == 0


ADAPTIVE_POLICY = f"""\
mode: enforce
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {{id: k, sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}, owner: feed, scopes: [r], expires: "2999-01-01"}}
rate_limits:
  overload:
    retry_after: 1s
    adaptive: {{interval: 1s, min_samples: 2, min_limit: 1, initial_limit: 2, max_limit: 50, stale_after: 3s}}
routes:
  - {{name: pay, path: /pay, methods: [GET], providers: [keys], priority: critical}}
  - {{name: browse, path: /browse, methods: [GET], providers: [keys]}}
  - {{name: report, path: /report, methods: [GET], providers: [keys], priority: background}}
"""


def test_a_slow_upstream_sheds_lower_classes_and_critical_keeps_flowing(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(ADAPTIVE_POLICY)
    with LocalStack(path, tmp_path / "state", access_log="service") as stack:
        key = {"x-api-key": API_KEY}
        base = stack.base_url
        stop = threading.Event()
        delay = ["5"]  # what the upstream takes on the normal route, ms
        critical: list[int] = []

        def browse() -> None:  # closed-loop clients that honour Retry-After
            while not stop.is_set():
                status, headers, _ = send(
                    "GET", f"{base}/browse", {**key, "x-echo-delay-ms": delay[0]}
                )
                if status == 503:
                    time.sleep(float(headers.get("retry-after", "1")))

        workers = [threading.Thread(target=browse, daemon=True) for _ in range(12)]
        for w in workers:
            w.start()
        try:
            time.sleep(3.5)  # a few windows of normal latency: the baseline
            assert send("GET", f"{base}/report", key)[0] == 200
            delay[0] = "400"  # the upstream slows down 80x
            deadline = time.monotonic() + 20
            shed = None
            while time.monotonic() < deadline:
                critical.append(send("GET", f"{base}/pay", key)[0])
                status, _, body = send("GET", f"{base}/report", key)
                if status == 503:
                    shed = json.loads(body)
                    break
                time.sleep(0.1)
            assert shed is not None and shed["error"] == "overloaded", "background never shed"
            for _ in range(10):  # while shedding, critical still gets through
                critical.append(send("GET", f"{base}/pay", key)[0])
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=10)
        assert set(critical) == {200}
        # the upstream is idle again: nothing is shed any more
        wait_for(lambda: send("GET", f"{base}/report", key)[0] == 200, timeout=20)


SCRAPE_POLICY = f"""\
mode: enforce
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {{id: k, sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}, owner: feed, scopes: [r], expires: "2999-01-01"}}
detection:
  mode: enforce
  warmup: 0s
  detectors:
    enumeration: {{response: block, target: address, ttl: 10m, not_found: 5}}
routes:
  - {{name: files, path: "/files/{{name}}", methods: [GET], public: true}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys], scopes: [r]}}
"""


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_public_route_reaches_the_detectors_only_through_the_feed(
    tmp_path: Path, transport: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(SCRAPE_POLICY)
    with LocalStack(path, tmp_path / "state", transport=transport, access_log="service") as stack:
        base, key = stack.base_url, {"x-api-key": API_KEY, "host": "api.local"}
        assert send("GET", f"{base}/v1/orders/1", key)[0] == 200
        # Envoy serves the public route without asking authz: no decision record; the
        # upstream's 404s are seen only in the access log, and an enumerator collects them
        missing = {"host": "api.local", "x-echo-status": "404"}
        for i in range(8):
            assert send("GET", f"{base}/files/f{i}", missing)[0] == 404

        def blocked() -> bool:
            status, _, body = send("GET", f"{base}/v1/orders/2", key)
            return status == 403 and json.loads(body)["error"] == "caller_blocked"

        wait_for(blocked, timeout=20)
        assert not [r for r in records(stack) if str(r["path"]).startswith("/files/")]
