"""What the access-log feed costs, one run.

1. Per access-log entry (Envoy sends them in batches; 64 here): parsing the gRPC
   message (``StreamAccessLogsMessage``), translating an entry into a
   ResponseObservation including the join key (the decision id from the entry's
   metadata), publishing it on the hub (one no-op listener), and the feed's whole
   path as it runs in the service (offer + drain: translate, join, count, publish);
   µs per entry, and per entry against one decision through the engine.
2. Per decision: the ext_authz answer with the decision id in its dynamic metadata
   (what the engine sends, so Envoy logs it) vs the same answer without it, on both
   transports (gRPC: the encoded CheckResponse; HTTP: the response headers), with
   the engine's decision itself: µs and the ratio.

Best of ``--rounds`` for each figure, alternating, on the process CPU clock, with the
load average beside it.

    python bench/feed_cost.py [--entries 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.detect.events import ResponseHub, ResponseObservation
from authz.engine import CompiledPolicy, PolicyEngine
from authz.feedback.feed import ResponseFeed
from authz.model import Decision, Request
from authz.policy.loader import load_policy
from authz.stages import Shared
from authz.telemetry.metrics import MemoryMetrics
from authz.transport import envoy_http
from authz.transport.envoy_als import StreamAccessLogsMessage, build_http_entry, to_observation
from authz.transport.envoy_grpc import encode_check_response

KEY = "key-a-0123456789abcdef"
SHA = hashlib.sha256(KEY.encode()).hexdigest()
POLICY = f"""\
providers:
  keys:
    type: api_key
    keys:
      - {{id: a, sha256: {SHA}, owner: a, scopes: [r], expires: "2999-01-01"}}
routes:
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [keys], scopes: [r]}}
"""
BATCH = 64


class Nothing:
    def on_response(self, observation: ResponseObservation) -> None:
        return None


def _per(fn: Callable[[], object], n: int) -> float:
    """µs of this process's CPU per item (the machine is shared: CPU, not wall, time)."""
    t = time.process_time()
    fn()
    return (time.process_time() - t) / n * 1e6


def messages(n: int) -> list[bytes]:
    out = []
    for start in range(0, n, BATCH):
        m = StreamAccessLogsMessage()
        for i in range(start, min(start + BATCH, n)):
            m.http_logs.log_entry.append(
                build_http_entry(
                    path=f"/v1/orders/{i}?expand=items", route="get-order", status=200,
                    decision_id=f"0190f1c2-7a3b-7c4d-8e5f-{i:012d}", bytes_sent=512,
                    start=time.time(), client_address=f"198.51.100.{i % 250}",
                )
            )  # fmt: skip
        out.append(m.SerializeToString())
    return out


def feed_round(wire: list[bytes], n: int) -> dict[str, float]:
    parsed = []

    def parse() -> None:
        for raw in wire:
            parsed.append(StreamAccessLogsMessage.FromString(raw))

    out = {"parse (gRPC message)": _per(parse, n)}
    entries = [e for m in parsed for e in m.http_logs.log_entry]
    observations: list[ResponseObservation] = []
    out["translate + join"] = _per(lambda: observations.extend(map(to_observation, entries)), n)
    hub = ResponseHub()
    hub.subscribe(Nothing())
    def publish() -> None:
        for o in observations:
            hub.publish(o)

    out["publish (1 listener)"] = _per(publish, n)
    feed = ResponseFeed(hub, to_observation, metrics=MemoryMetrics(), capacity=n + 1, batch=256)

    def whole() -> None:
        for m in parsed:
            feed.offer(m.http_logs.log_entry)
        while feed.drain_batch():
            pass

    out["feed: offer + drain (all)"] = _per(whole, n)
    assert feed.counts["joined"] == n
    return out


async def decisions(path: Path, n: int) -> tuple[float, list[Decision]]:
    engine = PolicyEngine(CompiledPolicy(load_policy(path), shared=Shared()))
    requests = [
        Request(method="GET", path=f"/v1/orders/{i}", headers={"x-api-key": KEY},
                source_address="192.0.2.7")
        for i in range(n)
    ]  # fmt: skip
    check = engine.check
    assert (await check(requests[0])).allowed
    out: list[Decision] = []
    t = time.process_time()
    for r in requests:
        out.append(await check(r))
    return (time.process_time() - t) / n * 1e6, out


def answer_round(decided: list[Decision]) -> dict[str, float]:
    without = [
        dataclasses.replace(d, metadata={k: v for k, v in d.metadata.items() if k != "decision_id"})
        for d in decided
    ]
    n = len(decided)
    out = {}
    for label, batch in (("with id", decided), ("without id", without)):
        out[f"gRPC answer {label}"] = _per(lambda b=batch: list(map(encode_check_response, b)), n)  # type: ignore[misc]
        out[f"HTTP answer {label}"] = _per(lambda b=batch: list(map(envoy_http.to_response, b)), n)  # type: ignore[misc]
    return out


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    n = args.entries
    wire = messages(n)
    print(f"load average before: {loadavg()}")
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "p.yaml"
        path.write_text(POLICY)
        for _ in range(args.rounds):
            for name, us in feed_round(wire, n).items():
                best[name] = min(us, best.get(name, float("inf")))
            decision_us, decided = asyncio.run(decisions(path, n))
            best["decision (engine)"] = min(decision_us, best.get("decision (engine)", 1e9))
            for name, us in answer_round(decided).items():
                best[name] = min(us, best.get(name, float("inf")))
    print(f"\nper access-log entry ({n} entries in messages of {BATCH}), best of {args.rounds}:")
    for name in ("parse (gRPC message)", "translate + join", "publish (1 listener)",
                 "feed: offer + drain (all)"):  # fmt: skip
        print(f"  {name:28} {best[name]:6.2f} µs")
    decision = best["decision (engine)"]
    entry = best["parse (gRPC message)"] + best["feed: offer + drain (all)"]
    print(f"  {'decision (engine), for scale':28} {decision:6.2f} µs")
    print(f"  entry (parse + feed) / decision: {entry / decision:.3f}")
    print("\nper decision, the ext_authz answer with and without the decision id:")
    for transport in ("gRPC", "HTTP"):
        with_id = best[f"{transport} answer with id"]
        without = best[f"{transport} answer without id"]
        print(
            f"  {transport}: answer {with_id:5.2f} vs {without:5.2f} µs"
            f" (+{with_id - without:4.2f});"
            f" decision + answer {decision + with_id:6.2f} vs {decision + without:6.2f} µs,"
            f" ratio {(decision + with_id) / (decision + without):.3f}"
        )
    print(f"\nload average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
