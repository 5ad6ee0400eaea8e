"""Memory under many distinct callers: every table the engine keeps must stay bounded.

Sends ``--count`` distinct JWTs (one subject each: every one is verified and cached,
so the verified-token LRU evicts), ``--count`` distinct SPIFFE IDs (mTLS identities)
and ``--count`` distinct undeclared paths through one PolicyEngine, in this process,
with the real decision-log sink writing to a file. Prints RSS as it goes, the peak
(VmHWM) and the size of every table against its bound.

    python bench/memory.py [--count 1000000] [--json FILE]

A million JWTs take a few minutes: each is signed here and verified (ES256) by the
engine. Tables and their eviction rules:

- JWT verified-token cache: LRU, ``cache_size`` entries per provider (policy, default
  10,000; never used past ``exp``);
- mTLS identities: per provider, cleared when 4,096 peers are reached;
- identity header blocks: per policy, cleared when 4,096 identities are reached;
- undeclared route shapes: 10,000 (method, shape) counters, the rest counted as one;
- decision counters: one per reason (a fixed set);
- JWKS keys: the issuer's key set, replaced on refresh; unknown-kid refreshes at
  most once per ``jwks_refresh_interval``;
- the decision-log queue: drained every 50 ms by the writer thread.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fixtures
from bench.common import rss_kib


async def run(count: int, work: Path, report_every: int) -> dict[str, Any]:
    from authz.audit.sink import JsonLinesSink
    from authz.compiled import IDENTITY_HEADER_CACHE_SIZE, CompiledPolicy
    from authz.engine import MAX_DECISION_SERIES, MAX_UNDECLARED_SHAPES, PolicyEngine
    from authz.identity import mtls
    from authz.identity.jwt import JwtProvider
    from authz.model import Request
    from authz.policy.loader import load_policy

    fx = fixtures.make(work)
    policy = CompiledPolicy(load_policy(fx.policy))
    await policy.start()
    sink = JsonLinesSink(path=str(work / "decisions.log")).open()
    engine = PolicyEngine(policy, sink=sink)
    jwt = policy.providers["dev"]
    mesh = policy.providers["mesh"]
    assert isinstance(jwt, JwtProvider) and isinstance(mesh, mtls.MtlsProvider)
    pid = os.getpid()
    gc.collect()
    start_rss, _ = rss_kib(pid)
    samples: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    started = time.monotonic()
    for i in range(count):
        token = fx.mint(subject=f"user-{i}")
        requests = (
            Request(
                method="GET",
                path=f"/v1/orders/{i}",
                host=fixtures.HOST,
                headers={"authorization": f"Bearer {token}"},
            ),
            Request(
                method="GET",
                path="/internal/metrics",
                host=fixtures.HOST,
                principal=f"spiffe://demo.local/ns/team-{i}/sa/worker-{i}",
            ),
            Request(method="GET", path=f"/v1/shadow-{i}/items", host=fixtures.HOST),
        )
        for request in requests:
            reason = (await engine.check(request)).reason
            outcomes[reason] = outcomes.get(reason, 0) + 1
        if i % 256 == 0:
            await asyncio.sleep(0)  # background work (key set refreshes) gets its turn
        if (i + 1) % report_every == 0 or i + 1 == count:
            rss, peak = rss_kib(pid)
            sample = {
                "identities": i + 1,
                "rss_mib": round(rss / 1024, 1),
                "peak_mib": round(peak / 1024, 1),
                "jwt_cache": jwt.cached,
                "undeclared_shapes": len(engine.undeclared),
                "seconds": round(time.monotonic() - started, 1),
            }
            samples.append(sample)
            print(
                f"{sample['identities']:>9,} identities  RSS {sample['rss_mib']:7.1f} MiB  "
                f"peak {sample['peak_mib']:7.1f} MiB  jwt cache {sample['jwt_cache']:,}  "
                f"undeclared shapes {sample['undeclared_shapes']:,}  ({sample['seconds']:.0f} s)",
                flush=True,
            )
    sink.close()
    await policy.close()
    rss, peak = rss_kib(pid)
    tables = {
        "jwt_verified_tokens": {"size": jwt.cached, "bound": jwt.config.cache_size},
        "mtls_identities": {"size": mesh.cached, "bound": mtls.IDENTITY_CACHE_SIZE},
        "identity_header_blocks": {
            "size": len(policy.identity_headers_cache),
            "bound": IDENTITY_HEADER_CACHE_SIZE,
        },
        "undeclared_shapes": {"size": len(engine.undeclared), "bound": MAX_UNDECLARED_SHAPES + 1},
        "decision_counters": {
            "size": len(getattr(engine.metrics, "families", {})["authz_decisions_total"].series),
            "bound": MAX_DECISION_SERIES,
        },
        "jwks_keys": {"size": len(jwt.jwks.keys), "bound": "the issuer's key set"},
    }
    return {
        "count": count,
        "checks": sum(outcomes.values()),
        "outcomes": outcomes,
        "rss_start_mib": round(start_rss / 1024, 1),
        "rss_end_mib": round(rss / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "tables": tables,
        "samples": samples,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="distinct identities")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="authz-memory-"))
    result = asyncio.run(run(args.count, work, max(1, args.count // 10)))
    print()
    print(
        f"{args.count:,} distinct JWTs, SPIFFE IDs and undeclared paths "
        f"({result['checks']:,} checks in {result['seconds']:.0f} s): RSS "
        f"{result['rss_start_mib']} MiB at start, {result['rss_end_mib']} MiB at the end, "
        f"peak {result['rss_peak_mib']} MiB"
    )
    for name, table in result["tables"].items():
        print(f"  {name:24} {table['size']:>8,}  (bound: {table['bound']})")
    print(f"  outcomes: {result['outcomes']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    bounded = all(
        not isinstance(t["bound"], int) or t["size"] <= t["bound"]
        for t in result["tables"].values()
    )
    return 0 if bounded else 1


if __name__ == "__main__":
    raise SystemExit(main())
