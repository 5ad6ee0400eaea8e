"""What request hygiene costs per decision, one run: the same policy and request with
the hygiene stages (authz.hygiene) and without them.

The request is the benchmark's (bench/fixtures.py: ``GET /v1/orders/42``, a cached
token, a template route, a scope check; decision log off), with the headers a browser
or a client library sends (``--headers`` of them, ~12 by default) and, in the
``strip`` run, two client-sent identity headers that are removed (``x-user-id``,
``x-auth-role``). Engines:

- ``without``: the registry minus the hygiene stages (the baseline);
- ``with``: the default registry (Host, method override, identity header scan);
- ``strip``: ``with``, on the request carrying the two identity headers.

Rounds alternate between the engines; each figure is the best round's CPU time per
decision (``time.process_time``); ratios are of those best rounds. Then the stage
alone (its step), for a steadier figure on a busy machine.

    python bench/hygiene_cost.py [--calls 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fixtures
from bench.profile_engine import _sync

COMMON = {
    "accept": "application/json",
    "accept-encoding": "gzip, deflate, br",
    "accept-language": "en-US,en;q=0.9",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) bench",
    "x-forwarded-proto": "https",
    "x-forwarded-for": "198.51.100.7",
    "x-envoy-expected-rq-timeout-ms": "15000",
    "cache-control": "no-cache",
    "cookie": "session=abc",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from authz import pipeline
    from authz.engine import CompiledPolicy, PolicyEngine
    from authz.hygiene import RequestHygiene
    from authz.policy.loader import load_policy
    from authz.server import make_sink
    from authz.stages import Context, Shared
    from authz.transport import envoy_grpc

    with tempfile.TemporaryDirectory() as tmp:
        fx = fixtures.make(Path(tmp))

        def request(extra: dict[str, str]) -> Any:
            headers = {"authorization": f"Bearer {fx.token}", "x-request-id": "r"}
            return envoy_grpc.to_request(
                envoy_grpc.build_check_request(
                    method="GET", path=fixtures.PATH, host=fixtures.HOST,
                    headers={**headers, **COMMON, **extra}, request_id="r",
                    source_address="192.0.2.10",
                )
            )  # fmt: skip

        plain = request({})
        forged = request({"x-user-id": "1", "x-auth-role": "admin"})
        config = load_policy(fx.policy)
        policies = []

        def engine(stages: Any) -> Any:
            policy = CompiledPolicy(config, shared=Shared(), stages=stages)
            asyncio.run(policy.start())
            policies.append(policy)
            return PolicyEngine(policy, sink=make_sink("off"))

        hygiene_names = ("hygiene", "content_encoding")
        without = engine([s for s in pipeline.STAGES if s.name not in hygiene_names])
        with_ = engine(None)
        assert not any(s.name == "hygiene" for s in without.policy.head)
        assert any(s.name == "hygiene" for s in with_.policy.head)
        stripped = _sync(with_.check(forged))
        assert stripped.allowed and {"x-user-id", "x-auth-role"} <= set(
            stripped.remove_upstream_headers
        )
        assert _sync(without.check(plain)).allowed and _sync(with_.check(plain)).allowed

        runs: dict[str, Callable[[], Any]] = {
            "without": lambda: _sync(without.check(plain)),
            "with": lambda: _sync(with_.check(plain)),
            "strip": lambda: _sync(with_.check(forged)),
        }
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(args.rounds):
            for name, fn in runs.items():
                start = time.process_time()
                for _ in range(args.calls):
                    fn()
                best[name] = min(best[name], (time.process_time() - start) / args.calls)

        stage = next(s for s in with_.policy.head if isinstance(s, RequestHygiene))
        alone = {}
        for name, req in (("plain", plain), ("strip", forged)):
            ctx = Context(req, fixtures.PATH, "")
            n = args.calls * 5
            fastest = float("inf")
            for _ in range(args.rounds):
                start = time.process_time()
                for _ in range(n):
                    stage.step(ctx)
                fastest = min(fastest, (time.process_time() - start) / n)
            alone[name] = fastest

        print(f"request headers: {len(plain.headers)} (strip run: {len(forged.headers)})")
        print(f"{'engine':<10}{'µs/decision':>14}{'vs without':>12}")
        for name, cost in best.items():
            print(f"{name:<10}{cost * 1e6:>14.2f}{cost / best['without']:>12.3f}")
        print(f"hygiene stage alone: {alone['plain'] * 1e6:.2f} µs (plain), "
              f"{alone['strip'] * 1e6:.2f} µs (two headers to strip)")  # fmt: skip
        for policy in policies:
            asyncio.run(policy.close())


if __name__ == "__main__":
    main()
