"""The rate_limits sections of a policy: typed config, and every problem located."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.errors import PolicyError
from authz.policy.loader import load_policy
from authz.policy.ratelimit_config import OverloadConfig, RedisStoreConfig, RuleConfig
from authz.policy.ratelimit_loader import parse_rate
from authz.ratelimit.stage import phase_of

FULL = """\
rate_limits:
  stores:
    shared: {type: redis, url: "redis://127.0.0.1:6379/0", timeout: 50ms, pool_size: 8}
  max_keys: 5000
  trusted_hops: 1
  ipv6_prefix: 56
  rules:
    - {name: per-address, rate: 50/s, burst: 100, key: [client_address]}
    - {name: per-route, rate: 1000/m, key: [route]}
    - {name: per-tenant, rate: 100/10s, key: ["claim:tenant"], store: shared, on_store_error: local}
  overload: {background_at: 50, normal_at: 100, signal_file: /run/authz/overload, retry_after: 2s}
routes:
  - name: export
    path: /export
    methods: [GET]
    public: true
    priority: background
    rate_limits:
      - {name: export-rate, rate: 20/s, burst: 40, key: [header:X-Client], store: shared, batch: 10, sync_interval: 50ms}
      - {name: export-slots, concurrency: 4, lease: 1m, shadow: true}
  - {name: checkout, path: /checkout, methods: [POST], public: true, priority: critical, rate_limits: [{name: c, rate: 1/500ms}]}
"""


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return load_policy(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(PolicyError) as err:
        load(tmp_path, text)
    return [
        f"{loc.rsplit(':', 2)[1]}:{loc.rsplit(':', 2)[2]} {msg}" for loc, msg in err.value.problems
    ]


def test_full_config_is_typed(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    limits = config.rate_limits  # type: ignore[attr-defined]
    assert limits.stores == (
        RedisStoreConfig(name="shared", url="redis://127.0.0.1:6379/0", timeout=0.05, pool_size=8),
    )
    assert (limits.max_keys, limits.trusted_hops, limits.ipv6_prefix) == (5000, 1, 56)
    per_address, per_route, per_tenant = limits.rules
    assert (per_address.limit, per_address.period, per_address.burst) == (50, 1.0, 100)
    assert per_route.burst == 1000 and per_route.interval == pytest.approx(0.06)
    assert (per_tenant.limit, per_tenant.period, per_tenant.on_store_error) == (100, 10.0, "local")
    assert limits.overload == OverloadConfig(
        background_at=50, normal_at=100, signal_file="/run/authz/overload", retry_after=2.0
    )
    export = config.routes[0]  # type: ignore[attr-defined]
    assert export.priority == "background"
    rate, slots = export.rate_limits
    assert rate == RuleConfig(
        name="export-rate",
        key=("header:x-client",),
        limit=20,
        period=1.0,
        burst=40,
        store="shared",
        batch=10,
        sync_interval=0.05,
        route="export",
        location=rate.location,
    )
    assert rate.location.endswith(":19:9")
    assert (slots.concurrency, slots.burst, slots.lease, slots.shadow) == (True, 4, 60.0, True)
    assert config.routes[1].rate_limits[0].interval == pytest.approx(0.5)  # type: ignore[attr-defined]
    # where each runs: before routing, before identity, after authorization
    assert [phase_of(r) for r in limits.rules] == ["request", "pre", "post"]
    assert [phase_of(r) for r in export.rate_limits] == ["pre", "post"]


def test_no_rate_limits_section_means_none(tmp_path: Path) -> None:
    config = load(tmp_path, "routes: [{name: a, path: /a, methods: [GET], public: true}]\n")
    assert config.rate_limits.rules == ()  # type: ignore[attr-defined]
    assert config.routes[0].priority == "normal"  # type: ignore[attr-defined]
    assert not config.rate_limits.overload.enabled  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "rate"), [("20/s", (20, 1.0)), ("5000/h", (5000, 3600.0)), ("1/500ms", (1, 0.5))]
)
def test_parse_rate(text: str, rate: tuple[int, float]) -> None:
    assert parse_rate(text) == rate


def test_every_problem_is_located(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
rate_limits:
  stores:
    memory: {type: redis, url: "redis://x"}
    r: {type: redis, url: "http://x"}
  rules:
    - {name: dup, rate: 5/s}
    - {name: a, rate: 5/s, concurrency: 3}
    - {name: b, rate: 5/s, store: nowhere}
    - {name: c, rate: 5/s, batch: 3}
    - {name: d, rate: 5/s, burst: 2, store: r, batch: 10}
    - {name: e, concurrency: 2, burst: 4, lease: 0s}
    - {name: f, rate: 5/fortnight}
    - {name: g, rate: 5/s, key: [cookie]}
    - {name: h, rate: 5/s, sync_interval: 1s}
  overload: {background_at: 10, normal_at: 5}
routes:
  - name: x
    path: /x
    methods: [GET]
    public: true
    priority: background
    rate_limits: [{name: dup, rate: 1/s}]
  - {name: y, path: /y, methods: [GET], public: true, priority: critical}
""",
    )
    assert found == [
        "3:13 $.rate_limits.stores.memory: 'memory' is the in-process store's name",
        "4:27 $.rate_limits.stores.r.url: 'http://x' does not match '^(redis|rediss|unix)://'",
        "7:7 $.rate_limits.rules[1]: give either rate (with an optional burst) or concurrency (with a lease)",
        "8:35 $.rate_limits.rules[2].store: no store named 'nowhere' (known: memory, r)",
        "9:35 $.rate_limits.rules[3].batch: batched counting needs a redis store",
        "10:55 $.rate_limits.rules[4].batch: a batch larger than the burst (2) is never used",
        "11:40 $.rate_limits.rules[5].burst: burst is for rate rules, not concurrency caps",
        "11:50 $.rate_limits.rules[5].lease: must be more than zero",
        "12:23 $.rate_limits.rules[6].rate: '5/fortnight' does not match '^[1-9][0-9]{0,9}/([0-9]+(\\\\.[0-9]+)?)?(ms|s|m|h|d)$'",
        "13:34 $.rate_limits.rules[7].key[0]: 'cookie' does not match '^(subject|api_key|spiffe_id|issuer|route|method|client_address|claim:[A-Za-z0-9_.:/-]{1,64}|header:[A-Za-z0-9][A-Za-z0-9-]{0,63})$'",
        "14:43 $.rate_limits.rules[8].sync_interval: sync_interval is for batched rules (batch: N)",
        "15:44 $.rate_limits.overload.normal_at: normal routes cannot be shed before background ones",
        "22:26 $.routes[0].rate_limits[0].name: duplicate rate limit name 'dup'",
        "23:65 $.routes[1].priority: a public route is not checked by authz (Envoy skips ext_authz there) unless it has rate_limits; a priority alone has no effect",
    ]


def test_validate_cli_reports_without_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "p.yaml"
    path.write_text("routes: []\nrate_limits: {rules: [{name: x, rate: 5/s, store: nope}]}\n")
    result = subprocess.run(
        [sys.executable, "-m", "authz", "validate", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no store named 'nope'" in result.stderr


def test_readme_example_is_a_valid_policy(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Rate limits and load shedding", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = load(tmp_path, example)
    limits = config.rate_limits  # type: ignore[attr-defined]
    assert [r.name for r in limits.rules] == ["per-address"]
    routes = {r.name: r for r in config.routes}  # type: ignore[attr-defined]
    assert routes["search"].rate_limits[0].batch == 50
    assert routes["export"].priority == "background"
    assert routes["checkout"].priority == "critical"
