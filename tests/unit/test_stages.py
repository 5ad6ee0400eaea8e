"""The stage pipeline: phases run in order, per route, and can deny with headers."""

from __future__ import annotations

from pathlib import Path

from authz.engine import CompiledPolicy, PolicyEngine
from authz.errors import AuthzError
from authz.model import Request
from authz.policy.config import RouteConfig
from authz.policy.loader import load_policy
from authz.stages import Check, Context, Load, Shared

POLICY = """\
routes:
  - {name: open, path: /open, methods: [GET], public: true}
  - {name: limited, path: /limited, methods: [GET], public: true}
"""


class Limited(AuthzError):
    status = 429
    reason = "rate_limited"


class Recorder:
    """A stage factory that records calls and denies on the 'limited' route."""

    def __init__(self, name: str, phase: str, calls: list[str]) -> None:
        self.name = name
        self.phase = phase
        self.calls = calls
        self.built: list[str] = []

    def build(self, load: Load, route: RouteConfig | None) -> Check | None:
        shared = load.shared
        counter = shared.get("counter", lambda: [0])
        self.built.append(route.name if route else "<policy>")

        async def check(ctx: Context) -> None:
            counter[0] += 1
            self.calls.append(f"{self.name}:{ctx.route.name if ctx.route else '-'}")
            if self.phase == "post":
                ctx.response_headers.append(("ratelimit", "limit=10, remaining=9"))
                ctx.upstream_headers.append(("x-quota-remaining", "9"))
            if self.phase == "pre" and ctx.route and ctx.route.name == "limited":
                raise Limited("slow down", headers=(("retry-after", "3"),))

        return check


def engine(tmp_path: Path, calls: list[str], shared: Shared) -> tuple[PolicyEngine, list[Recorder]]:
    (tmp_path / "p.yaml").write_text(POLICY)
    stages = [
        Recorder("req", "request", calls),
        Recorder("pre", "pre", calls),
        Recorder("post", "post", calls),
    ]
    policy = CompiledPolicy(load_policy(tmp_path / "p.yaml"), shared=shared, stages=stages)  # type: ignore[arg-type]
    return PolicyEngine(policy), stages


async def test_phases_run_in_order_and_add_headers(tmp_path: Path) -> None:
    calls: list[str] = []
    eng, stages = engine(tmp_path, calls, Shared())
    assert stages[0].built == ["<policy>"]
    assert stages[1].built == ["open", "limited"]
    decision = await eng.check(Request(method="GET", path="/open"))
    assert calls == ["req:-", "pre:open", "post:open"]
    assert decision.allowed
    assert ("ratelimit", "limit=10, remaining=9") in decision.response_headers
    assert ("x-quota-remaining", "9") in decision.upstream_headers


async def test_a_stage_denies_with_its_headers(tmp_path: Path) -> None:
    calls: list[str] = []
    eng, _ = engine(tmp_path, calls, Shared())
    decision = await eng.check(Request(method="GET", path="/limited", request_id="r1"))
    assert not decision.allowed
    assert decision.status == 429
    assert decision.reason == "rate_limited"
    assert ("retry-after", "3") in decision.response_headers
    assert calls == ["req:-", "pre:limited"]  # post never ran


async def test_request_phase_runs_for_undeclared_paths(tmp_path: Path) -> None:
    calls: list[str] = []
    eng, _ = engine(tmp_path, calls, Shared())
    decision = await eng.check(Request(method="GET", path="/nowhere"))
    assert decision.status == 404
    assert calls == ["req:-"]


async def test_shared_objects_survive_a_reload(tmp_path: Path) -> None:
    shared = Shared()
    calls: list[str] = []
    first, _ = engine(tmp_path, calls, shared)
    await first.check(Request(method="GET", path="/open"))
    second, _ = engine(tmp_path, calls, shared)
    await second.check(Request(method="GET", path="/open"))
    assert shared.get("counter", lambda: [0]) == [6]
