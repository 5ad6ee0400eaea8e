"""``authz_stage_latency_ms{stage}``: with the probe set (what ``--metrics`` does),
every named stage a decision runs is timed, a synchronous one, an awaited one and
one that denies; sampled, a call in N timed weighing N; without it the policy's
steps are the stages' own."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from authz.engine import CompiledPolicy, PolicyEngine
from authz.errors import AuthzError
from authz.model import Request
from authz.policy.loader import load_policy
from authz.stages import Context, Shared, step_of
from authz.telemetry.metrics import MemoryMetrics
from authz.telemetry.stages import StageLatency

POLICY = """\
version: 1
undeclared_routes: deny
rate_limits:
  rules:
    - {name: per-address, rate: 1/h, key: [client_address]}
routes:
  - {name: open, path: /open, methods: [GET], public: true}
"""


def engine(tmp_path: Path, probe: bool) -> tuple[PolicyEngine, MemoryMetrics]:
    (tmp_path / "p.yaml").write_text(POLICY)
    shared = Shared()
    metrics = MemoryMetrics()
    shared.metrics = metrics
    if probe:
        shared.step_probe = StageLatency(metrics, every=1).wrap  # every call timed
    return PolicyEngine(CompiledPolicy(load_policy(tmp_path / "p.yaml"), shared=shared)), metrics


def counts(metrics: MemoryMetrics) -> dict[str, float]:
    family = metrics.families.get("authz_stage_latency_ms")
    return {} if family is None else {k[0]: v for k, v in metrics.snapshot()[family.name].items()}


async def test_each_stage_run_is_timed_denies_included(tmp_path: Path) -> None:
    eng, metrics = engine(tmp_path, probe=True)
    request = Request(method="GET", path="/open", source_address="192.0.2.1")
    assert (await eng.check(request)).allowed
    assert not (await eng.check(request)).allowed  # rate_limited: the stage raised
    assert not (await eng.check(Request(method="GET", path="/nope"))).allowed  # undeclared
    got = counts(metrics)
    # the global rule runs before routing: the second request stops there (timed),
    # the third at the route stage (timed)
    assert (got["canonical_path"], got["ratelimit"], got["route"]) == (3, 3, 2), got
    family = metrics.families["authz_stage_latency_ms"]
    assert all(h.sum >= 0 for h in family.series.values())  # type: ignore[attr-defined]


async def test_without_the_probe_nothing_is_timed(tmp_path: Path) -> None:
    eng, metrics = engine(tmp_path, probe=False)
    await eng.check(Request(method="GET", path="/open", source_address="192.0.2.1"))
    assert counts(metrics) == {}
    policy = eng.policy
    assert policy.head_steps == tuple(step_of(s) for s in policy.head)


class Slow:
    name, phase = "slow", "identity"

    async def check(self, ctx: Context) -> None:
        await asyncio.sleep(0.02)
        raise AuthzError("no")

    def element(self, ctx: Context) -> str:
        return ""


async def test_an_awaited_stage_is_timed_to_its_end() -> None:
    metrics = MemoryMetrics()
    step = StageLatency(metrics, every=1).wrap(Slow())
    pending = step(Context(Request(method="GET", path="/"), "", ""))
    assert pending is not None
    with contextlib.suppress(AuthzError):
        await pending
    (series,) = metrics.families["authz_stage_latency_ms"].series.values()
    assert series.count == 1 and series.sum >= 20  # type: ignore[attr-defined]


class Quick:
    name, phase = "quick", "request"

    def __init__(self) -> None:
        self.calls = 0

    def step(self, ctx: Context) -> None:
        self.calls += 1

    async def check(self, ctx: Context) -> None:
        self.step(ctx)

    def element(self, ctx: Context) -> str:
        return ""


def test_sampled_calls_weigh_what_they_stand_for() -> None:
    metrics = MemoryMetrics()
    stage = Quick()
    step = StageLatency(metrics, every=4).wrap(stage)
    ctx = Context(Request(method="GET", path="/"), "", "")
    for _ in range(9):
        assert step(ctx) is None
    assert stage.calls == 9  # every call runs; calls 1, 5 and 9 are timed
    (series,) = metrics.families["authz_stage_latency_ms"].series.values()
    assert series.count == 12  # type: ignore[attr-defined]
    assert sum(series.counts) == 12  # type: ignore[attr-defined]
