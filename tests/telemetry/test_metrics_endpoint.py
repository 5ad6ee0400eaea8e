"""``authz serve --metrics``: a real service scraped over HTTP, the answer parsed
with prometheus_client's text-format parser; decision counts by reason and by
route; the detection child's metrics merged in; a token when asked for; a
non-loopback address refused without one; ``--workers 2`` merged by the supervisor."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.control.test_control_server import check
from tests.support import ServiceProcess, free_port, grpc_serving, wait_for

POLICY = """\
mode: enforce
undeclared_routes: deny
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
  - name: once
    path: /once
    methods: [GET]
    public: true
    rate_limits: [{name: once-a-minute, rate: 1/m}]
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def scrape(
    address: str, token: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    request = urllib.request.Request(f"http://{address}/metrics")
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def status_of(url: str, **headers: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_scrape_counts_decisions_by_reason_and_route(
    policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    svc = start_service(policy, "--metrics", metrics)
    for path in ("/healthz", "/healthz", "/once", "/once", "/nope"):
        check(svc.address, path)
    got = scrape(metrics)
    by_route = {k[1]: v for k, v in got.items() if k[0] == "authz_decisions_total"}
    assert by_route == {
        (("decision", "allow"), ("reason", "allowed"), ("route", "health")): 2,
        (("decision", "allow"), ("reason", "allowed"), ("route", "once")): 1,
        (("decision", "deny"), ("reason", "rate_limited"), ("route", "once")): 1,
        # an undeclared request's path never becomes a label
        (("decision", "deny"), ("reason", "undeclared_route"), ("route", "undeclared")): 1,
    }
    stages = {dict(k[1])["stage"] for k in got if k[0] == "authz_stage_latency_ms_count"}
    assert {"canonical_path", "route", "ratelimit"} <= stages, stages
    assert got[("authz_decision_latency_ms_count", (("decision", "allow"),))] == 3
    assert got[("authz_decision_latency_ms_bucket", (("decision", "deny"), ("le", "+Inf")))] == 2
    (version,) = [k for k in got if k[0] == "authz_policy_info"]
    assert got[version] == 1
    base = f"http://{metrics}"
    assert status_of(base + "/") == 404
    assert status_of(base + "/metrics?x=1") == 200


def test_token_required_when_configured(
    tmp_path: Path, policy: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    token = "m" * 40
    (tmp_path / "token").write_text(token + "\n")
    metrics = f"127.0.0.1:{free_port()}"
    start_service(policy, "--metrics", metrics, "--metrics-token-file", str(tmp_path / "token"))
    url = f"http://{metrics}/metrics"
    assert status_of(url) == 401
    assert status_of(url, authorization="Bearer " + "x" * 40) == 401
    assert status_of(url, authorization="Bearer " + token) == 200
    assert ("authz_decisions_total", ()) not in scrape(metrics, token)  # parsed fine


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--metrics", "0.0.0.0:9200"], "is not a loopback address"),
        (["--tracing"], "--tracing needs --otlp-endpoint"),
        (["--metrics-insecure-open"], "need --metrics"),
        (["--trace-sampling", "2"], "expected a ratio from 0 to 1"),
        (["--otlp-endpoint", "127.0.0.1:4317", "--tracing"], "expected http://HOST:PORT"),
    ],
)
def test_bad_flags_exit_2(policy: Path, flags: list[str], message: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "authz", "serve", str(policy), *flags],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_workers_scrape_is_merged_by_the_supervisor(tmp_path: Path, policy: Path) -> None:
    address, control = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    metrics = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "AUTHZ_RUNTIME_DIR": str(tmp_path / "run"), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "serve.log", "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "authz", "serve", str(policy), "--grpc", address,
             "--workers", "2", "--control", control, "--decision-log", "off",
             "--metrics", metrics],
            stdout=subprocess.DEVNULL, stderr=fh, env=env,
        )  # fmt: skip
    try:

        def both_up() -> bool:
            try:
                return (
                    grpc_serving(address) and scrape(metrics)[("authz_workers_answered", ())] == 2
                )
            except Exception:
                return False

        wait_for(both_up, timeout=60)
        sent = 30
        for i in range(sent):  # a new connection each: SO_REUSEPORT spreads them
            check(address, "/healthz", source=f"10.0.0.{i % 5}")
        got = scrape(metrics)
        allowed = (("decision", "allow"), ("reason", "allowed"), ("route", "health"))
        assert got[("authz_decisions_total", allowed)] == sent
        assert got[("authz_decision_latency_ms_count", (("decision", "allow"),))] == sent
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_workers_without_control_plane_refuse_metrics(policy: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "authz", "serve", str(policy), "--grpc",
         f"127.0.0.1:{free_port()}", "--workers", "2", "--control", "off",
         "--metrics", f"127.0.0.1:{free_port()}", "--decision-log", "off"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "needs the control plane" in run.stderr


DETECT_POLICY = """\
mode: enforce
undeclared_routes: deny
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
detection:
  mode: enforce
  warmup: 0s
  detectors:
    honeypot: {response: block, target: address, ttl: 1h, paths: ["/.env"]}
enforcement:
  store: memory
"""


def test_the_scoring_process_metrics_appear_on_the_serving_process_scrape(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    """Detection scores in a child process (scorer: process, the default); what it
    counts is merged into the serving process's metrics (detect/remote.py
    merge_metrics), so the one scrape shows it."""
    policy = tmp_path / "detect.yaml"
    policy.write_text(DETECT_POLICY)
    metrics = f"127.0.0.1:{free_port()}"
    svc = start_service(policy, "--metrics", metrics)
    check(svc.address, "/healthz", source="10.0.0.9")
    check(svc.address, "/.env", source="10.0.0.7")  # the honeypot: a finding, a block

    def merged() -> bool:
        got = scrape(metrics)
        return (
            got.get(("authz_detect_findings_total", (("detector", "honeypot"),)), 0) >= 1
            and got.get(("authz_detect_scorer_cpu_seconds_total", ()), 0) > 0
        )

    wait_for(merged, timeout=30)
    got = scrape(metrics)
    # counted in the child only: the findings, the child's CPU, its observations
    assert got[("authz_detect_observations_total", (("kind", "request"),))] >= 2
    actions = {k[1]: v for k, v in got.items() if k[0] == "authz_detect_actions_total"}
    assert actions[(("detector", "honeypot"), ("mode", "enforce"), ("response", "block"))] == 1
    # the serving process's own half: the child is up
    assert got[("authz_detect_scorer_up", ())] == 1
    assert got[("authz_detect_scorer_restarts_total", ())] == 0
    # the child's tables, against their bounds: two callers seen (two addresses)
    assert got[("authz_table_entries", (("table", "detect_callers"),))] >= 2
    assert got[("authz_table_capacity", (("table", "detect_callers"),))] >= 1000
