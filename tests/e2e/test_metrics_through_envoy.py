"""End to end: traffic through a real Envoy to ``authz serve --metrics``, then a
scrape of ``/metrics`` parsed with prometheus_client's text-format parser; the
decision counts by route, decision and reason are the traffic's, and every family
the dashboard and the alert rules name is there (tests/telemetry/test_dashboards.py
checks their names against the same list)."""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz import devissuer
from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from tests.support import free_port

pytestmark = pytest.mark.e2e

POLICY = """\
mode: enforce
undeclared_routes: deny
realm: orders
providers:
  dev:
    type: jwt
    issuer: {issuer}
    audiences: [orders]
    algorithms: [ES256]
    max_lifetime: 1h
routes:
  # public and nothing to check: Envoy answers without asking authz (the route plan)
  - {{name: catalog, path: /v1/catalog, methods: [GET], public: true}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [dev], scopes: [orders:read]}}
  - name: once
    path: /once
    methods: [GET]
    public: true
    rate_limits: [{{name: once-a-minute, rate: 1/m}}]
"""

Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(address: str) -> tuple[dict[Sample, float], set[str]]:
    """(name, sorted labels) -> value, and the family names."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    families = list(text_string_to_metric_families(text))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    return samples, {f.name for f in families}


@pytest.fixture(scope="module", params=["grpc", "http"])
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[LocalStack, str, str]]:
    tmp = tmp_path_factory.mktemp(f"metrics-{request.param}")
    key = devissuer.generate_key("ES256")
    issuer = devissuer.DevIssuerServer([key]).start()
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(issuer=issuer.url))
    metrics = f"127.0.0.1:{free_port()}"
    stack = LocalStack(
        policy=policy,
        state_dir=tmp / "state",
        transport=request.param,
        extra_serve_args=("--metrics", metrics),
    )
    try:
        stack.start()
        token = devissuer.mint(
            key, issuer=issuer.url, subject="alice", audience="orders", scopes="orders:read"
        )
        yield stack, metrics, token
    finally:
        stack.stop()
        issuer.stop()


def test_decision_counts_by_reason_match_the_traffic(stack: tuple[LocalStack, str, str]) -> None:
    env, metrics, token = stack
    bearer = {"authorization": f"Bearer {token}"}
    stranger = devissuer.generate_key("ES256")  # signs with a key the issuer never published
    other = devissuer.mint(stranger, issuer=env_issuer(token), subject="mallory", audience="orders")
    traffic = [
        ("/v1/catalog", {}, 200, "", "", ""),  # not asked: not counted
        ("/v1/orders/1", bearer, 200, "get-order", "allow", "allowed"),
        ("/v1/orders/2", bearer, 200, "get-order", "allow", "allowed"),
        ("/v1/orders/3", {}, 401, "get-order", "deny", "missing_credential"),
        ("/v1/orders/4", {"authorization": "Bearer " + other}, 401, "get-order", "deny", ""),
        ("/once", {}, 200, "once", "allow", "allowed"),
        ("/once", {}, 429, "once", "deny", "rate_limited"),
        ("/v1/admin/users", {}, 404, "undeclared", "deny", "undeclared_route"),
        ("/v1/admin/7", {}, 404, "undeclared", "deny", "undeclared_route"),
    ]
    expected: Counter[tuple[str, str, str]] = Counter()
    for path, headers, status, route, decision, reason in traffic:
        got_status, _, body = send("GET", env.base_url + path, headers)
        assert got_status == status, (path, body)
        if not route:
            continue
        if not reason:  # the token's issuer is not the provider's: read the code it got
            import json

            reason = json.loads(body)["error"]
        expected[(route, decision, reason)] += 1
    samples, families = scrape(metrics)
    decisions = {
        (dict(labels)["route"], dict(labels)["decision"], dict(labels)["reason"]): value
        for (name, labels), value in samples.items()
        if name == "authz_decisions_total"
    }
    assert decisions == dict(expected), sorted(decisions.items())
    # no sample of any family names a raw path, an address or a subject
    for _name, labels in samples:
        for _label, value in labels:
            assert not value.startswith("/") and "127.0.0.1" not in value
            assert value not in ("alice", "mallory")
    by_reason: Counter[str] = Counter()
    for (_route, _decision, reason), n in expected.items():
        by_reason[reason] += n
    assert by_reason["undeclared_route"] == 2 and by_reason["allowed"] == 3
    assert samples[("authz_decision_latency_ms_count", (("decision", "allow"),))] == 3
    assert samples[("authz_policy_info", (("version", env_version(samples)),))] == 1
    assert {"authz_stage_latency_ms", "authz_jwks_fetches"} <= families  # parser: no _total
    hits = samples[("authz_jwks_key_lookups_total", (("provider", "dev"), ("result", "hit")))]
    assert hits >= 1  # the first token's key; the second is a cached verification


def env_issuer(token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["iss"])


def env_version(samples: dict[Sample, float]) -> str:
    (version,) = [
        dict(labels)["version"] for name, labels in samples if name == "authz_policy_info"
    ]
    return version


def test_every_family_scraped_is_one_the_dashboard_test_knows(
    stack: tuple[LocalStack, str, str],
) -> None:
    """The dashboard test reads the exported families from the source; a real scrape
    shows none it missed, and the core ones the dashboard charts are there."""
    from tests.telemetry.test_dashboards import dashboard_metric_names, exported_names

    env, metrics, _ = stack
    send("GET", env.base_url + "/once")
    samples, _ = scrape(metrics)
    scraped = {name for name, _ in samples}
    assert scraped - exported_names() == set()
    core = {
        "authz_decisions_total", "authz_decision_latency_ms_bucket",
        "authz_stage_latency_ms_bucket", "authz_jwks_key_lookups_total",
        "authz_jwks_fetches_total", "authz_jwks_usable_until_timestamp_seconds",
        "authz_policy_info", "authz_policy_reloads_total", "authz_jwt_cache_hits_total",
    }  # fmt: skip
    assert core <= dashboard_metric_names() & scraped
