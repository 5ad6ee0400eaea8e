"""A flood of fresh identities stays within the detection tables' bounds: RSS, one run.

Feeds ``--count`` observations (default a million) through the background scorer,
each from a new subject, token and client address (a new /24 every 256), with a
new object id; prints the process's RSS and the tables' sizes after the first
``--tables`` worth (the tables are full from there on) and at the end, and the
evictions counted. The RSS must stay flat once the tables are full.

    python bench/detect_flood.py [--count 1000000] [--tables 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.detect.events import Observation
from authz.detect.scorer import Scorer
from authz.policy.config import RouteConfig
from authz.policy.detection_config import DetectionConfig, HoneypotConfig, TablesConfig
from authz.telemetry.metrics import MemoryMetrics


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--tables", type=int, default=100_000, help="callers and tokens bound")
    args = parser.parse_args()
    metrics = MemoryMetrics()
    scorer = Scorer(metrics, sink=lambda: _Sink())
    tables = TablesConfig(callers=args.tables, tokens=args.tables, routes=1000)
    config = DetectionConfig(
        mode="monitor", tables=tables, honeypot=HoneypotConfig(paths=("/.env",))
    )
    routes = (RouteConfig(name="get-order", path="/v1/orders/{id}", methods=("GET",)),)
    scorer.configure(config, routes)
    with open("/proc/loadavg") as f:
        print("loadavg", " ".join(f.read().split()[:3]))
    print(f"RSS before: {rss_mb():.1f} MB (tables bounded at {args.tables:,} entries)")
    started = time.perf_counter()
    marks = {args.tables, args.count // 2, args.count}
    for i in range(1, args.count + 1):
        address = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        fields = ("GET", "/v1/orders/{id}", f"/v1/orders/{i}", address, "jwt", f"user-{i}")
        scorer.offer(
            Observation(
                i * 0.001, f"d{i}", "get-order", *fields, f"tok-{i}", (), True, 200, "allowed", 0
            )
        )
        if len(scorer.queue) >= 4096:
            scorer.drain()
        if i in marks:
            scorer.drain()
            sizes = {
                "features.callers": len(scorer.store.callers) if scorer.store else 0,
                **{
                    t.name: len(t)
                    for d in scorer.detectors
                    for t in vars(d).values()
                    if hasattr(t, "capacity")
                },
                "joins": len(scorer._joins),
                "in_force": len(scorer._in_force),
            }
            print(
                f"after {i:>9,} identities: RSS {rss_mb():7.1f} MB; "
                + ", ".join(f"{k} {v:,}" for k, v in sizes.items())
            )
    took = time.perf_counter() - started
    evicted = metrics.snapshot().get("authz_detect_evicted_total", {})
    print(f"evictions: {', '.join(f'{k[0]} {int(v):,}' for k, v in sorted(evicted.items()))}")
    print(f"scored {args.count:,} in {took:.1f}s ({took / args.count * 1e6:.1f} µs each)")


class _Sink:
    def apply(self, action: object) -> None:
        return None


if __name__ == "__main__":
    main()
