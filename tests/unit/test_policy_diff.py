"""widenings(old, new): every change that lets more requests through, one finding each."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from authz.policy.config import (
    ApiKey,
    ApiKeyProviderConfig,
    JwtProviderConfig,
    MtlsProviderConfig,
    PolicyConfig,
    RouteConfig,
)
from authz.policy.diff import Finding, widenings
from authz.policy.loader import load_policy_bytes
from authz.policy.ratelimit_config import RuleConfig

ORDERS = RouteConfig(
    name="orders",
    path="/v1/orders",
    methods=("GET",),
    providers=("dev",),
    scopes=("orders:read", "orders:admin"),
    claims=(("tenant", ("acme",)), ("tier", ("gold",))),
    rate_limits=(RuleConfig(name="per-user", key=("subject",), limit=10, period=1.0, burst=20),),
)
MESH = RouteConfig(
    name="mesh",
    path="/internal",
    methods=("POST",),
    providers=("mesh",),
    spiffe_ids=("spiffe://prod/billing",),
    spiffe_id_prefixes=("spiffe://prod/ops/",),
)
DEV = JwtProviderConfig(name="dev", issuer="https://login.example", audiences=("orders",))
MESH_PROVIDER = MtlsProviderConfig(name="mesh", trust_domains=("prod",))
KEYS = ApiKeyProviderConfig(name="keys", keys=(ApiKey(id="k1", sha256="0" * 64, owner="ops"),))
BASE = PolicyConfig(
    version="v1",
    source="p.yaml",
    providers=(DEV, MESH_PROVIDER, KEYS),
    routes=(ORDERS, MESH),
)


def with_route(policy: PolicyConfig, name: str, **changes: object) -> PolicyConfig:
    routes = tuple(
        dataclasses.replace(r, **changes) if r.name == name else r  # type: ignore[arg-type]
        for r in policy.routes
    )
    return dataclasses.replace(policy, routes=routes)


def codes(findings: list[Finding]) -> list[tuple[str, str, str | None]]:
    return [(f.level, f.code, f.route) for f in findings]


def test_the_same_policy_widens_nothing() -> None:
    assert widenings(BASE, dataclasses.replace(BASE, version="v2")) == []


def test_a_route_that_becomes_public() -> None:
    new = with_route(BASE, "orders", public=True, providers=(), scopes=(), claims=())
    (finding,) = widenings(BASE, new)
    assert (finding.level, finding.code, finding.route) == ("warning", "route_public", "orders")
    assert finding.message == "route orders: becomes public: no credential is required any more"


def test_lost_scopes_and_claims_but_not_added_ones() -> None:
    new = with_route(BASE, "orders", scopes=("orders:read", "orders:write"), claims=())
    assert codes(widenings(BASE, new)) == [
        ("warning", "scopes_removed", "orders"),
        ("warning", "claim_removed", "orders"),
        ("warning", "claim_removed", "orders"),
    ]
    assert "orders:admin" in widenings(BASE, new)[0].message
    # requiring more is narrower: nothing to say
    narrower = with_route(BASE, "orders", scopes=(*ORDERS.scopes, "orders:audit"))
    assert widenings(BASE, narrower) == []


def test_a_claim_that_accepts_more_values_is_info() -> None:
    new = with_route(BASE, "orders", claims=(("tenant", ("acme", "globex")), ("tier", ("gold",))))
    (finding,) = widenings(BASE, new)
    assert (finding.level, finding.code) == ("info", "claim_values_added")
    assert "globex" in finding.message


def test_lost_spiffe_ids_let_the_whole_trust_domain_in() -> None:
    new = with_route(BASE, "mesh", spiffe_ids=(), spiffe_id_prefixes=())
    (finding,) = widenings(BASE, new)
    assert (finding.level, finding.code, finding.route) == (
        "warning",
        "spiffe_ids_removed",
        "mesh",
    )
    assert "every SPIFFE ID" in finding.message


def test_spiffe_id_allowlist_changes() -> None:
    # dropping one entry of an allowlist that stays non-empty narrows it
    assert widenings(BASE, with_route(BASE, "mesh", spiffe_id_prefixes=())) == []
    assert widenings(BASE, with_route(BASE, "mesh", spiffe_ids=())) == []
    # admitting another ID is a grant: info
    added = with_route(BASE, "mesh", spiffe_ids=("spiffe://prod/billing", "spiffe://prod/x"))
    assert codes(widenings(BASE, added)) == [("info", "spiffe_ids_added", "mesh")]
    assert "spiffe://prod/x" in widenings(BASE, added)[0].message


def test_providers_gained_or_all_lost() -> None:
    gained = with_route(BASE, "orders", providers=("dev", "keys"))
    assert codes(widenings(BASE, gained)) == [("warning", "provider_added", "orders")]
    assert "keys" in widenings(BASE, gained)[0].message
    lost_all = with_route(BASE, "mesh", providers=())
    assert codes(widenings(BASE, lost_all)) == [("warning", "providers_removed", "mesh")]
    assert widenings(BASE, with_route(BASE, "orders", providers=())) != []


def test_modes() -> None:
    policy_monitor = dataclasses.replace(BASE, mode="monitor")
    # one policy-wide finding, not one per route that follows the policy's mode
    assert codes(widenings(BASE, policy_monitor)) == [("warning", "policy_monitor", None)]
    route_monitor = with_route(BASE, "mesh", mode="monitor")
    assert codes(widenings(BASE, route_monitor)) == [("warning", "route_monitor", "mesh")]
    # a route that pins enforce stays enforced when the policy goes to monitor
    pinned = with_route(BASE, "mesh", mode="enforce")
    assert codes(widenings(pinned, dataclasses.replace(pinned, mode="monitor"))) == [
        ("warning", "policy_monitor", None)
    ]
    # monitor -> enforce narrows
    assert widenings(policy_monitor, BASE) == []
    undeclared = dataclasses.replace(BASE, undeclared_routes="monitor")
    assert codes(widenings(BASE, undeclared)) == [("warning", "undeclared_monitor", None)]
    assert widenings(undeclared, BASE) == []


def test_new_routes_are_info_and_removed_ones_are_not_widenings() -> None:
    extra = RouteConfig(name="items", path="/v1/items", methods=("GET",), public=True)
    grown = dataclasses.replace(BASE, routes=(*BASE.routes, extra))
    (finding,) = widenings(BASE, grown)
    assert (finding.level, finding.code, finding.route) == ("info", "route_added", "items")
    assert finding.message == "route items: new route GET /v1/items (public)"
    assert widenings(grown, BASE) == []


def test_rate_limits_removed_raised_or_shadowed_are_info() -> None:
    rule = ORDERS.rate_limits[0]
    removed = with_route(BASE, "orders", rate_limits=())
    assert codes(widenings(BASE, removed)) == [("info", "rate_limit_removed", "orders")]
    faster = with_route(BASE, "orders", rate_limits=(dataclasses.replace(rule, limit=50),))
    (finding,) = widenings(BASE, faster)
    assert (finding.level, finding.code) == ("info", "rate_limit_raised")
    assert "10/1s burst 20 -> 50/1s burst 20" in finding.message
    longer_period = dataclasses.replace(rule, period=2.0)  # 5/s: slower
    assert widenings(BASE, with_route(BASE, "orders", rate_limits=(longer_period,))) == []
    bigger_burst = dataclasses.replace(rule, burst=40)
    assert len(widenings(BASE, with_route(BASE, "orders", rate_limits=(bigger_burst,)))) == 1
    shadow = with_route(BASE, "orders", rate_limits=(dataclasses.replace(rule, shadow=True),))
    assert "now shadow" in widenings(BASE, shadow)[0].message


def test_global_rate_limits_and_concurrency_caps() -> None:
    cap = RuleConfig(name="slots", key=(), burst=4, lease=30.0)
    limits = dataclasses.replace(BASE.rate_limits, rules=(cap,))
    old = dataclasses.replace(BASE, rate_limits=limits)
    raised = dataclasses.replace(
        BASE, rate_limits=dataclasses.replace(limits, rules=(dataclasses.replace(cap, burst=8),))
    )
    (finding,) = widenings(old, raised)
    assert (finding.level, finding.code, finding.route) == ("info", "rate_limit_raised", None)
    assert finding.message == "policy rate limit slots raised (concurrency 4 -> concurrency 8)"
    assert codes(widenings(old, BASE)) == [("info", "rate_limit_removed", None)]


def test_providers_that_accept_more() -> None:
    wider = dataclasses.replace(
        BASE,
        providers=(
            dataclasses.replace(DEV, issuer="https://evil.example", audiences=("orders", "x")),
            dataclasses.replace(MESH_PROVIDER, trust_domains=("prod", "staging")),
            dataclasses.replace(
                KEYS, keys=(*KEYS.keys, dataclasses.replace(KEYS.keys[0], id="k2"))
            ),
        ),
    )
    findings = widenings(BASE, wider)
    assert codes(findings) == [
        ("warning", "issuer_changed", None),
        ("warning", "audiences_added", None),
        ("warning", "trust_domains_added", None),
        ("info", "api_keys_added", None),
    ]
    assert findings[2].message == "provider mesh: trusts staging"
    assert widenings(wider, BASE) == [
        Finding(
            "warning",
            "issuer_changed",
            "provider dev: issuer https://evil.example -> https://login.example",
        )
    ]


def test_a_policy_cut_short_at_a_line_boundary(tmp_path: Path) -> None:
    """The fault of the issue: a writer stopped after a line, the rest still valid YAML."""
    text = """\
providers:
  mesh: {type: mtls, trust_domains: [prod]}
routes:
  - name: internal
    path: /internal
    methods: [POST]
    providers: [mesh]
    spiffe_ids:
      - spiffe://prod/billing
"""
    whole = load_policy_bytes(text.encode(), source="p.yaml", base_dir=tmp_path)
    cut = text[: text.index("    spiffe_ids:")]
    short = load_policy_bytes(cut.encode(), source="p.yaml", base_dir=tmp_path)
    assert codes(widenings(whole, short)) == [("warning", "spiffe_ids_removed", "internal")]


def test_trust_bundles_removed_or_changed() -> None:
    def mesh(bundles: tuple[tuple[str, str], ...]) -> PolicyConfig:
        provider = dataclasses.replace(MESH_PROVIDER, trust_bundles=bundles)
        others = tuple(p for p in BASE.providers if p.name != MESH_PROVIDER.name)
        return dataclasses.replace(BASE, providers=(*others, provider))

    per_domain = mesh((("prod", "/pki/prod.pem"),))
    assert widenings(per_domain, per_domain) == []
    assert widenings(BASE, per_domain) == []  # a bundle per domain only narrows
    (removed,) = widenings(per_domain, BASE)
    assert (removed.level, removed.code) == ("warning", "trust_bundles_removed")
    (changed,) = widenings(per_domain, mesh((("prod", "/pki/other.pem"),)))
    assert changed.code == "trust_bundles_changed"
    assert changed.message == "provider mesh: other CA bundle for prod"
