"""Adaptive shedding: the gradient limit (falls when latency rises, recovers, backs off on
5xx, never grows while idle), the shaper fed by access-log observations window by window
(Little's law, shed demand, a quiet feed pauses it), and the shed stage: critical never
shed, background first; the policy's ``overload.adaptive`` with located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.detect.events import RESPONSE_HUB, ResponseHub, ResponseObservation
from authz.errors import PolicyError
from authz.policy.loader import load_policy
from authz.policy.ratelimit_config import AdaptiveConfig
from authz.ratelimit.adaptive import ADAPTIVE, AdaptiveShaper
from authz.ratelimit.gradient import GradientLimit, RouteBaseline, ewma_weight
from authz.ratelimit.stage import RateLimitRuntime
from tests.ratelimit.test_stage import BASE, KEY_A, SHED_ROUTES, Env

CONFIG = AdaptiveConfig(min_limit=5, initial_limit=50, max_limit=1000)


# -- the gradient limit ------------------------------------------------------------------


def test_the_route_gradient_is_one_within_tolerance_and_bounded_below() -> None:
    base = RouteBaseline()
    weight = ewma_weight(CONFIG)
    assert base.gradient(10.0, weight, 1.5) == 1.0  # first window: its own baseline
    assert base.gradient(14.0, weight, 1.5) == 1.0  # within 1.5x
    assert base.gradient(30.0, weight, 1.5) == pytest.approx(1.5 * base.baseline / 30.0)
    assert base.gradient(1000.0, weight, 1.5) == 0.5  # one window never halves it more


def test_the_limit_falls_when_latency_rises_and_recovers_after() -> None:
    limit = GradientLimit(CONFIG)
    base = RouteBaseline()
    weight = ewma_weight(CONFIG)
    history = []
    for _ in range(20):  # healthy, busy: grows by sqrt(L), and to 2x what it served
        g = base.gradient(10.0, weight, CONFIG.tolerance)
        history.append(limit.update(g, 0.0, concurrency=limit.limit * 0.6))
    healthy = limit.limit
    assert history == sorted(history) and healthy > 50
    for _ in range(15):  # latency x4: the gradient is 0.5, the limit falls
        g = base.gradient(40.0, weight, CONFIG.tolerance)
        assert g < 1
        limit.update(g, 0.0, concurrency=10.0)
    assert limit.limit < healthy / 2
    low = limit.limit
    for _ in range(15):  # latency back to normal: it grows again
        g = base.gradient(10.0, weight, CONFIG.tolerance)
        assert g == 1.0
        limit.update(g, 0.0, concurrency=limit.limit * 0.6)
    assert limit.limit > 2 * low


def test_5xx_back_off_multiplicatively() -> None:
    limit = GradientLimit(CONFIG)
    limit.update(1.0, 0.5, concurrency=40)
    assert limit.limit == pytest.approx(50 * CONFIG.backoff)
    for _ in range(100):
        limit.update(1.0, 0.5, concurrency=40)
    assert limit.limit == CONFIG.min_limit  # never below the floor


def test_an_idle_upstream_does_not_raise_the_limit() -> None:
    limit = GradientLimit(CONFIG)
    for _ in range(50):
        limit.update(1.0, 0.0, concurrency=1.0)  # far below L / headroom
    assert limit.limit == 50
    limit.update(None, 0.0, concurrency=0.0)  # no route had enough entries: hold
    assert limit.limit == 50


def test_the_limit_stays_within_its_bounds() -> None:
    limit = GradientLimit(CONFIG)
    limit.update(1.0, 0.0, concurrency=10_000)
    assert limit.limit == CONFIG.max_limit


# -- the shaper --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def obs(route: str, upstream_ms: float, status: int = 200, **kw: object) -> ResponseObservation:
    fields: dict[str, object] = dict(
        time=0.0, decision_id="d", route=route, method="GET", path="/p", client_address="a",
        status=status, bytes_sent=10, duration_ms=upstream_ms + 1, upstream_ms=upstream_ms,
    )  # fmt: skip
    fields.update(kw)
    return ResponseObservation(**fields)  # type: ignore[arg-type]


def window(shaper: AdaptiveShaper, clock: Clock, rate: int, latency: float, **kw: object) -> None:
    """One 1-second window: ``rate`` entries of ``latency`` ms on route ``browse``."""
    for _ in range(rate):
        shaper.on_response(obs("browse", latency, **kw))  # type: ignore[arg-type]
    clock.now += 1.0
    shaper.tick()


def shaper_with(config: AdaptiveConfig = CONFIG) -> tuple[AdaptiveShaper, Clock]:
    clock = Clock()
    return AdaptiveShaper(ResponseHub(), config, clock=clock), clock


def test_littles_law_and_a_healthy_upstream_sheds_nothing() -> None:
    shaper, clock = shaper_with()
    for _ in range(10):
        window(shaper, clock, rate=200, latency=100.0)  # 200/s x 0.1 s = 20 in flight
    assert shaper.concurrency == pytest.approx(20.0)
    assert shaper.limit >= 40  # headroom x D
    assert shaper.level(0, CONFIG) == 0
    assert shaper.level(3, CONFIG) == 0  # a few decisions in flight too


def test_a_slow_upstream_sheds_background_then_normal_and_recovers() -> None:
    shaper, clock = shaper_with()
    for _ in range(30):
        window(shaper, clock, rate=200, latency=100.0)
    healthy = shaper.limit
    window(shaper, clock, rate=200, latency=300.0)  # 3x slower: D 60 > L
    assert shaper.concurrency == pytest.approx(60.0)
    assert shaper.level(0, CONFIG) >= 1
    for _ in range(5):
        window(shaper, clock, rate=200, latency=600.0)  # 6x: D 120, L falling
    assert shaper.limit < healthy
    assert shaper.level(0, CONFIG) == 2
    for _ in range(60):  # the upstream recovers (load taken off it)
        window(shaper, clock, rate=200, latency=100.0)
    assert shaper.level(0, CONFIG) == 0


def test_shed_requests_count_as_demand_so_a_class_does_not_flap_back() -> None:
    shaper, clock = shaper_with(AdaptiveConfig(min_limit=5, initial_limit=20, max_limit=20))
    for _ in range(5):
        window(shaper, clock, rate=100, latency=100.0)  # D = 10, L = 20 (max)
    assert shaper.level(0, shaper.config) == 0
    # background traffic would add 20 in flight: while it is shed, its demand still counts
    for _ in range(5):
        for _ in range(200):
            shaper.note_shed("browse")
        window(shaper, clock, rate=100, latency=100.0)
    assert shaper.concurrency == pytest.approx(10.0)
    assert shaper.demand == pytest.approx(30.0)
    assert shaper.level(0, shaper.config) == 1  # stays shed: 30 > 20


def test_upstream_5xx_shed_even_when_latency_is_fine() -> None:
    shaper, clock = shaper_with()
    for _ in range(10):
        window(shaper, clock, rate=200, latency=100.0)
    before = shaper.limit
    for _ in range(30):
        window(shaper, clock, rate=200, latency=100.0, status=503)
    assert shaper.limit < before / 4
    assert shaper.level(0, CONFIG) >= 1


def test_envoys_own_denies_and_sheds_are_not_upstream_errors() -> None:
    shaper, clock = shaper_with()
    for _ in range(10):
        for _ in range(200):  # ext_authz denies (UAEX), including 503 overloaded
            shaper.on_response(obs("browse", -1, status=503, upstream=False, response_flags="UAEX"))
        window(shaper, clock, rate=50, latency=100.0)
    assert shaper.limit == 50  # neither backed off nor grown
    # ... but Envoy's 503 for a dead upstream is
    for _ in range(5):
        for _ in range(50):
            shaper.on_response(obs("browse", -1, status=503, upstream=False, response_flags="UF"))
        window(shaper, clock, rate=0, latency=0)
    assert shaper.limit < 50


def test_a_quiet_feed_pauses_adaptive_shedding() -> None:
    shaper, clock = shaper_with()
    assert shaper.level(10_000, CONFIG) == 0  # nothing heard yet: never sheds blind
    for _ in range(5):
        window(shaper, clock, rate=200, latency=100.0)
    for _ in range(3):
        window(shaper, clock, rate=200, latency=1000.0)  # D 200 against L ~50
    assert shaper.level(0, CONFIG) == 2
    for _ in range(int(CONFIG.stale_after)):
        clock.now += 1.0
        shaper.tick()
    assert shaper.stale
    assert shaper.level(10_000, CONFIG) == 0


def test_in_flight_decisions_count_at_once() -> None:
    shaper, clock = shaper_with()
    for _ in range(10):
        window(shaper, clock, rate=100, latency=100.0)  # D 10, L >= 20
    limit = shaper.limit
    assert shaper.level(0, CONFIG) == 0
    assert shaper.level(int(limit), CONFIG) == 1  # a burst of decisions right now
    assert shaper.level(int(limit * 2), CONFIG) == 2


def test_routes_are_bounded() -> None:
    shaper, _ = shaper_with(AdaptiveConfig(max_routes=3))
    for i in range(100):
        shaper.on_response(obs(f"r{i}", 1.0))
    assert len(shaper._routes) == 3


async def test_the_shaper_is_a_runtime_subscribed_only_while_started() -> None:
    from authz.stages import Shared

    shared = Shared()
    shaper = AdaptiveShaper.of(shared, CONFIG)
    hub = shared.get(RESPONSE_HUB, ResponseHub)
    assert shared.get(ADAPTIVE, lambda: None) is shaper
    assert shaper in shared.runtimes.pending and len(hub) == 0  # built: nothing started
    await shared.runtimes.start()
    assert len(hub) == 1
    hub.publish(obs("browse", 5.0))
    assert shaper._entries == 1
    await shared.runtimes.aclose()
    assert len(hub) == 0


# -- through the shed stage ---------------------------------------------------------------

ADAPTIVE_POLICY = (
    "rate_limits:\n  overload:\n    adaptive: {min_limit: 5, initial_limit: 10, max_limit: 10}\n"
    + SHED_ROUTES
)


async def test_critical_keeps_flowing_while_the_upstream_is_overloaded(tmp_path: Path) -> None:
    env = Env(tmp_path, ADAPTIVE_POLICY)
    shaper = RateLimitRuntime.of(env.shared).overload.adaptive
    assert shaper is not None and shaper.limit == 10
    shaper.clock = env.clock
    shaper._window_start = env.clock.now
    paths = ("/checkout", "/browse", "/sync")

    async def statuses() -> list[int]:
        return [(await env.get(p, key=KEY_A)).status for p in paths]

    assert await statuses() == [200, 200, 200]  # no feed yet: nothing shed
    for _ in range(20):
        shaper.on_response(obs("browse", 600.0))  # 20 x 0.6 s in 1 s: D = 12 > 10
    env.clock.now += 1
    shaper.tick()
    assert shaper.level(0, shaper.config) == 1
    assert await statuses() == [200, 200, 503]
    for _ in range(40):
        shaper.on_response(obs("browse", 600.0))  # D = 24 > 1.5 x 10
    env.clock.now += 1
    shaper.tick()
    shed = await env.get("/browse", key=KEY_A)
    assert (shed.status, shed.reason) == (503, "overloaded")
    assert await statuses() == [200, 503, 503]  # critical is never shed
    assert shaper._routes["sync"].shed == 1 and shaper._routes["browse"].shed == 2


def test_the_policys_settings_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BASE + "rate_limits:\n  overload: {adaptive: {}}\n" + SHED_ROUTES)
    assert load_policy(path).rate_limits.overload.adaptive == AdaptiveConfig()
    path.write_text(
        BASE + "rate_limits:\n  overload:\n    adaptive: {interval: 500ms, tolerance: 2, "
        "min_limit: 200, stale_after: 10s}\n" + SHED_ROUTES
    )
    adaptive = load_policy(path).rate_limits.overload.adaptive
    assert adaptive is not None
    assert (adaptive.interval, adaptive.tolerance, adaptive.stale_after) == (0.5, 2.0, 10.0)
    assert adaptive.initial_limit == 200  # the default, raised to min_limit
    path.write_text(BASE + "rate_limits:\n  overload: {background_at: 9}\n" + SHED_ROUTES)
    assert load_policy(path).rate_limits.overload.adaptive is None


@pytest.mark.parametrize(
    ("settings", "location", "message"),
    [
        ("{min_limit: 50, max_limit: 10}", "max_limit", "below min_limit"),
        ("{initial_limit: 5000, max_limit: 100}", "initial_limit", "outside"),
        ("{interval: 10ms}", "interval", "at least 50ms"),
        ("{interval: 2s, stale_after: 1s}", "stale_after", "at least the interval"),
        ("{tolerance: 0.5}", "tolerance", ""),
        ("{backoff: 1}", "backoff", ""),
        ("{min_samples: 0}", "min_samples", ""),
        ("{gradient: 3}", "gradient", ""),
    ],
)
def test_bad_settings_are_located(
    tmp_path: Path, settings: str, location: str, message: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BASE + f"rate_limits:\n  overload:\n    adaptive: {settings}\n" + SHED_ROUTES)
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    problems = exc.value.problems
    assert any(
        where.startswith(str(path) + ":9:")  # the line of the setting
        and f"$.rate_limits.overload.adaptive.{location}" in what
        and message in what
        for where, what in problems
    ) or any(
        # an unknown setting is reported on its parent, naming it
        "$.rate_limits.overload.adaptive" in what and location in what
        for _, what in problems
    ), problems


def test_the_readme_documents_the_defaults(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("Settings,\nwith their defaults", 1)[1].split("```yaml\n", 1)[1]
    path = tmp_path / "p.yaml"
    path.write_text(BASE + block.split("```", 1)[0] + SHED_ROUTES)
    assert load_policy(path).rate_limits.overload.adaptive == AdaptiveConfig()


def test_the_serving_policys_settings_drive_the_shaper() -> None:
    shaper, clock = shaper_with()
    for _ in range(5):
        window(shaper, clock, rate=200, latency=100.0)
    reloaded = AdaptiveConfig(min_limit=5, initial_limit=50, max_limit=30)
    shaper.level(0, reloaded)  # the first check on the new policy adopts its settings
    assert shaper.config is reloaded and shaper.limit <= 30
    window(shaper, clock, rate=200, latency=100.0)
    assert shaper.limit <= 30


def test_without_a_shaper_the_monitor_ignores_adaptive() -> None:
    from authz.policy.ratelimit_config import OverloadConfig
    from authz.ratelimit.overload import OverloadMonitor

    monitor = OverloadMonitor()
    assert monitor.level(10_000, OverloadConfig(adaptive=CONFIG)) == 0
