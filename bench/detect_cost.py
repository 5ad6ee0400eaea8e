"""What detection costs per decision, in process, one run: the same policy with and
without a ``detection:`` section, through the engine.

Rounds alternate between the two engines, for two policies: the cheapest decision
(an API key on one templated route) and the benchmark's policy (``bench/fixtures.py``,
the example policy: a cached ES256 JWT, 50 subjects), both from 500 client addresses
and 200 order ids. Per decision, on the process
CPU clock (``time.process_time``):

- ``without``: the policy alone;
- ``with: the stage alone``: the policy with ``detection:`` (the ``detect`` observe
  stage queues one tuple per decision), the queue drained only after the round;
- ``with, scoring between chunks``: the same, the scorer draining the queue every
  250 decisions as it would every ~200 ms, its own time excluded: what remains
  is the stage and the scorer's effect on the decisions after it (caches);
- ``scoring (background)``: the scorer's own CPU per observation (same process,
  off the request path);

and the ratios with/without (target: at most 1.10 on the request path). The arms
run in a rotating order each round.

    python bench/detect_cost.py [--calls 1000] [--rounds 90]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.detect.scorer import SHARED_NAME, Scorer
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy_bytes
from authz.stages import Shared
from bench import fixtures

KEY = "key-a-0123456789abcdef"
SHA = hashlib.sha256(KEY.encode()).hexdigest()
POLICY = f"""\
version: 1
providers:
  keys:
    type: api_key
    keys:
      - {{id: a, sha256: {SHA}, owner: a, scopes: [r], expires: "2999-01-01"}}
routes:
  - name: orders
    path: "/v1/orders/{{id}}"
    methods: [GET]
    providers: [keys]
    scopes: [r]
"""
DETECTION = """\
detection:
  mode: monitor
  detectors:
    honeypot: {paths: ["/.env", "/wp-login.php", "/.git/**"]}
"""


def engine(text: str, base_dir: Path) -> tuple[PolicyEngine, Shared]:
    shared = Shared()
    config = load_policy_bytes(text.encode(), source="bench.yaml", base_dir=base_dir)
    return PolicyEngine(CompiledPolicy(config, shared=shared)), shared


CHUNK = 250  # decisions between two drains (the scorer drains every ~200 ms)


async def run(
    e: PolicyEngine, requests: list[Request], scorer: Scorer | None, chunk: int = CHUNK
) -> tuple[float, float]:
    """(µs CPU per decision, µs CPU per scored observation), draining the queue every
    ``chunk`` decisions as the scorer would (the drain timed apart)."""
    check = e.check
    spent = scoring = 0.0
    scored = 0
    for start in range(0, len(requests), chunk):
        part = requests[start : start + chunk]
        started = time.process_time()
        for r in part:
            await check(r)
        spent += time.process_time() - started
        if scorer is not None:
            started = time.process_time()
            scored += scorer.drain()
            scoring += time.process_time() - started
    return spent / len(requests) * 1e6, scoring / max(1, scored) * 1e6


async def compare(
    name: str, text: str, requests: list[Request], rounds: int, base_dir: Path
) -> None:
    plain, _ = engine(text, base_dir)
    detecting, shared = engine(text + DETECTION, base_dir)
    scorer = shared.get(SHARED_NAME, lambda: None)
    assert isinstance(scorer, Scorer)
    await run(plain, requests[:2000], None)  # warm caches
    await run(detecting, requests[:2000], scorer)
    without: list[float] = []
    with_: list[float] = []
    at_end: list[float] = []
    scoring: list[float] = []

    async def arm_without() -> None:
        without.append((await run(plain, requests, None))[0])

    async def arm_with() -> None:
        took, scored = await run(detecting, requests, scorer)
        with_.append(took)
        scoring.append(scored)

    async def arm_at_end() -> None:
        at_end.append((await run(detecting, requests, scorer, chunk=len(requests)))[0])

    arms = [arm_without, arm_with, arm_at_end]
    for i in range(rounds):  # the order rotates: no arm always follows another
        for arm in arms[i % 3 :] + arms[: i % 3]:
            await arm()
    w, d, s, e = (statistics.median(x) for x in (without, with_, scoring, at_end))
    print(f"\n== {name}: {len(requests)} decisions x {rounds} rounds, medians, µs CPU")
    print(f"without detection            {w:7.2f} µs/decision")
    print(f"with: the stage alone        {e:7.2f} µs/decision   ratio {e / w:.3f}")
    print(f"with, scoring between chunks {d:7.2f} µs/decision   ratio {d / w:.3f}")
    print(f"scoring (background)         {s:7.2f} µs/decision")
    print(f"with + scoring               {d + s:7.2f} µs/decision   ratio {(d + s) / w:.3f}")
    ratios = sorted(b / a for a, b in zip(without, at_end, strict=True))
    print(
        f"the stage alone, ratio per round: median {statistics.median(ratios):.3f}, "
        f"range {ratios[0]:.3f} .. {ratios[-1]:.3f}"
    )
    # the machine is shared: other work only ever adds time, so the fastest round of
    # each arm is the one least disturbed
    print(
        f"fastest rounds: without {min(without):.2f}, the stage alone {min(at_end):.2f} "
        f"(ratio {min(at_end) / min(without):.3f}), scoring between chunks "
        f"{min(with_):.2f} (ratio {min(with_) / min(without):.3f}) µs/decision"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=90)
    args = parser.parse_args()
    with open("/proc/loadavg") as f:
        print("loadavg", " ".join(f.read().split()[:3]))
    minimal = [
        Request(
            "GET",
            f"/v1/orders/{i % 200}",
            headers={"x-api-key": KEY},
            source_address=f"10.0.{(i // 250) % 2}.{i % 250}",
        )
        for i in range(args.calls)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        fx = fixtures.make(Path(tmp))
        tokens = [fx.mint(subject=f"user-{i}") for i in range(50)]
        standard = [
            Request(
                "GET",
                f"/v1/orders/{i % 200}",
                host=fixtures.HOST,
                headers={"authorization": f"Bearer {tokens[i % 50]}"},
                source_address=f"10.0.{(i // 250) % 2}.{i % 250}",
            )
            for i in range(args.calls)
        ]
        await compare("the cheapest decision (an API key, one route)", POLICY, minimal,
                      args.rounds, Path(tmp))  # fmt: skip
        await compare("the benchmark's policy (bench/fixtures.py: a cached ES256 JWT)",
                      fx.policy.read_text(), standard, args.rounds, Path(tmp))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
