"""What the policy lifecycle tools cost, side by side in one run, on the example policy.

- ``authz test``: one case as the runner decides it (a token minted at the fixed clock
  with the test key, the CheckRequest built and read back, the engine's check) against
  the engine's check alone on the same request with a token minted once (µs; ratio;
  the policy's per-address rule left out, as every call comes from one address);
- ``authz diff``: :func:`authz.policy.changes.compare` of examples/policy.yaml and
  examples/policy.scope-added.yaml against loading one of them (ms; ratio);
- rollback: building the kept compiled config again (what RollbackPolicy does before
  the swap) against a reload's load of the file plus the same build (ms; ratio).

Times are CPU time of this process (``time.process_time``), best of ``--rounds``.

    python bench/policy_lifecycle.py [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authz.compiled import CompiledPolicy  # noqa: E402
from authz.devissuer import generate_key, mint  # noqa: E402
from authz.engine import PolicyEngine  # noqa: E402
from authz.policy.changes import compare  # noqa: E402
from authz.policy.config import JwtProviderConfig  # noqa: E402
from authz.policy.loader import load_policy  # noqa: E402
from authz.policytest.runner import with_test_keys  # noqa: E402
from authz.transport.envoy_grpc import build_check_request, to_request  # noqa: E402

POLICY = ROOT / "examples" / "policy.yaml"
CANDIDATE = ROOT / "examples" / "policy.scope-added.yaml"
CLOCK = 1_780_000_000.0


def _best(fn: Callable[[], Any], calls: int, rounds: int) -> float:
    """Best per-call CPU time over ``rounds`` rounds of ``calls`` calls, in µs."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls * 1e6)
    return best


async def _best_async(fn: Callable[[], Awaitable[Any]], calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            await fn()
        best = min(best, (time.process_time() - start) / calls * 1e6)
    return best


async def test_case_cost(calls: int, rounds: int) -> tuple[float, float]:
    config = load_policy(POLICY)
    # without the per-address rule: every call here comes from one address
    config = dataclasses.replace(
        config, rate_limits=dataclasses.replace(config.rate_limits, rules=())
    )
    key = generate_key("ES256")
    provider = config.provider("dev")
    assert isinstance(provider, JwtProviderConfig)
    with tempfile.TemporaryDirectory() as tmp:
        tested = with_test_keys(config, {"dev": key}, Path(tmp))
        policy = CompiledPolicy(tested, clock=lambda: CLOCK)
        await policy.shared.runtimes.start()
        await policy.start()
        engine = PolicyEngine(policy, clock=lambda: CLOCK)

        def token() -> str:
            return mint(key, issuer=provider.issuer, subject="alice", audience="orders",
                        scopes="orders:read", now=CLOCK)  # fmt: skip

        def request(jwt: str) -> Any:
            return to_request(build_check_request(
                method="GET", path="/v1/orders?limit=5", host="api.local",
                headers={"authorization": f"Bearer {jwt}"}, source_address="10.0.0.1",
            ))  # fmt: skip

        fixed = request(token())

        async def case() -> None:
            await engine.check(request(token()))

        async def check() -> None:
            await engine.check(fixed)

        try:
            assert (await engine.check(fixed)).allowed
            runner = await _best_async(case, calls, rounds)
            alone = await _best_async(check, calls, rounds)
            assert (await engine.check(fixed)).allowed  # nothing was limited
        finally:
            await policy.close()
            await policy.shared.runtimes.aclose()
    return runner, alone


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    runner, alone = asyncio.run(test_case_cost(args.calls, args.rounds))
    print(f"authz test: a case {runner:.0f} µs (mint + request + check), the check alone "
          f"{alone:.0f} µs: {runner / alone:.1f}x")  # fmt: skip
    few = max(1, args.calls // 100)
    old, new = load_policy(POLICY), load_policy(CANDIDATE)
    diff = _best(lambda: compare(old, new), few, args.rounds) / 1000
    load = _best(lambda: load_policy(CANDIDATE), few, args.rounds) / 1000
    print(f"authz diff: compare {diff:.2f} ms, loading one policy {load:.2f} ms: "
          f"compare is {diff / load:.2f}x a load")  # fmt: skip

    def build() -> None:
        CompiledPolicy(old)

    def reload() -> None:
        CompiledPolicy(load_policy(POLICY))

    rebuild = _best(build, few, args.rounds) / 1000
    reparse = _best(reload, few, args.rounds) / 1000
    print(f"rollback: rebuilding the kept config {rebuild:.2f} ms, a reload's load + build "
          f"{reparse:.2f} ms: {rebuild / reparse:.2f}x (before the providers' keys and "
          "the 1 s drain of the old policy, which both pay)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
