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

Medians of ``--rounds`` rounds, each ratio from figures of one round (median and
range), on the process CPU clock, with the load average beside them.

    python bench/feed_cost.py [--entries 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import statistics
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


def answer_round(decided: list[Decision], repeat: int = 3) -> dict[str, float]:
    """Each answer ``repeat`` times, with and without the id alternately; the least."""
    without = [
        dataclasses.replace(d, metadata={k: v for k, v in d.metadata.items() if k != "decision_id"})
        for d in decided
    ]
    n = len(decided)
    out: dict[str, float] = {}
    encoders = (("gRPC", encode_check_response), ("HTTP", envoy_http.to_response))
    for _ in range(repeat):
        for t, encode in encoders:
            for label, batch in (("with id", decided), ("without id", without)):
                us = _per(lambda e=encode, b=batch: list(map(e, b)), n)  # type: ignore[misc]
                key = f"{t} answer {label}"
                out[key] = min(us, out.get(key, float("inf")))
    return out


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    n = args.entries
    wire = messages(n)
    print(f"load average before: {loadavg()}")
    runs: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "p.yaml"
        path.write_text(POLICY)
        for _ in range(args.rounds):  # every ratio from figures of the same round
            figures = feed_round(wire, n)
            decision_us, decided = asyncio.run(decisions(path, n))
            figures["decision (engine)"] = decision_us
            figures.update(answer_round(decided))
            for name, us in figures.items():
                runs.setdefault(name, []).append(us)
            entry = figures["parse (gRPC message)"] + figures["feed: offer + drain (all)"]
            ratios.setdefault("entry", []).append(entry / decision_us)
            for t in ("gRPC", "HTTP"):
                with_id = decision_us + figures[f"{t} answer with id"]
                without = decision_us + figures[f"{t} answer without id"]
                ratios.setdefault(t, []).append(with_id / without)
    med = {name: statistics.median(values) for name, values in runs.items()}
    print(f"\nper access-log entry ({n} in messages of {BATCH}), median of {args.rounds} rounds:")
    for name in ("parse (gRPC message)", "translate + join", "publish (1 listener)",
                 "feed: offer + drain (all)", "decision (engine)"):  # fmt: skip
        print(f"  {name:28} {med[name]:6.2f} µs")
    print(f"  entry (parse + feed) / decision: {_ratio(ratios['entry'])}")
    print("\nper decision, the ext_authz answer with and without the decision id:")
    for t in ("gRPC", "HTTP"):
        with_id, without = med[f"{t} answer with id"], med[f"{t} answer without id"]
        print(
            f"  {t}: answer {with_id:5.2f} vs {without:5.2f} µs;"
            f" (decision + answer) with / without: {_ratio(ratios[t])}"
        )
    print(f"\nload average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
