"""The Grafana dashboard and the Prometheus alert rules under examples/ name only
metrics the service exports, and the rules load (``promtool check rules`` when
Debian's prometheus package is installed, as ``scripts/test`` does; structurally
always).

What the service exports is read from its source: every family is registered by a
``.counter("authz_...")``, ``.gauge(...)`` or ``.histogram(...)`` call with its name
as a literal or a module constant (the decision log's and the audit trail's through
``metric_prefix``).
tests/e2e/test_metrics_through_envoy.py checks that list against a real scrape: every
family a running service shows is in it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "authz-dashboard.json"
ALERTS = ROOT / "examples" / "prometheus" / "authz-alerts.yaml"

_CALL = re.compile(r"\.(counter|gauge|histogram)\(\s*(f?)\"([a-z0-9_{}]+)\"")
_CALL_CONST = re.compile(r"\.(counter|gauge|histogram)\(\s*([A-Z][A-Z0-9_]*)\s*,")
_PREFIX = re.compile(r"metric_prefix(?::\s*str)?\s*=\s*\"(authz_[a-z0-9_]+)\"")
_NAME = re.compile(r"\bauthz_[a-z0-9_]+\b")


def registered_families() -> dict[str, str]:
    """name -> kind of every family the package registers."""
    sources = [p.read_text() for p in (ROOT / "authz").rglob("*.py")]
    prefixes = sorted({m for s in sources for m in _PREFIX.findall(s)})
    out: dict[str, str] = {}
    for text in sources:
        for kind, const in _CALL_CONST.findall(text):  # NAME = "authz_..." in the module
            found = re.search(rf"^{const}\s*=\s*\"(authz_[a-z0-9_]+)\"", text, re.M)
            if found:
                out[found.group(1)] = kind
        for kind, is_f, name in _CALL.findall(text):
            if not is_f:
                out[name] = kind
            elif name.startswith("{metric_prefix}"):
                for prefix in prefixes:
                    out[name.replace("{metric_prefix}", prefix)] = kind
    return {n: k for n, k in out.items() if n.startswith("authz_")}


def exported_names(families: set[str] | None = None) -> set[str]:
    """The sample names a scrape can show (a histogram's _bucket, _sum, _count);
    ``families``: only those (names as prometheus_client's parser gives them)."""
    out: set[str] = set()
    for name, kind in registered_families().items():
        if (
            families is not None
            and name not in families
            and name.removesuffix("_total") not in families
        ):
            continue
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
    return out


def _dashboard_exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [
            v
            for k, v in node.items()
            if k in ("expr", "query", "definition") and isinstance(v, str)
        ]
        return found + [e for v in node.values() for e in _dashboard_exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _dashboard_exprs(v)]
    return []


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard_metric_names() -> set[str]:
    """Every metric name in the dashboard's queries and the alert rules' expressions."""
    exprs = _dashboard_exprs(json.loads(DASHBOARD.read_text()))
    exprs += [rule["expr"] for rule in alert_rules()]
    return {name for expr in exprs for name in _NAME.findall(expr)}


def test_the_source_scan_finds_the_families() -> None:
    families = registered_families()
    assert families["authz_decisions_total"] == "counter"
    assert families["authz_stage_latency_ms"] == "histogram"
    assert families["authz_audit_refused_total"] == "counter"
    assert families["authz_audit_queue_depth"] == "gauge"  # through metric_prefix
    assert families["authz_decision_log_dropped_total"] == "counter"
    assert families["authz_class_decisions_total"] == "counter"  # a module constant
    assert "authz_route_decisions_total" not in families  # folded into authz_decisions_total


def test_every_metric_the_dashboard_and_alerts_name_is_exported() -> None:
    named = dashboard_metric_names()
    assert len(named) >= 25, sorted(named)
    assert named - exported_names() == set()


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in (
        "decisions by decision and reason", "deny ratio", "stage latency", "jwks",
        "redis", "audit", "detections", "shed", "policy version", "reloads",
    ):  # fmt: skip
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p
            assert p["datasource"]["uid"] == "${datasource}"


def test_alert_rules_are_well_formed() -> None:
    data = yaml.safe_load(ALERTS.read_text())
    assert set(data) == {"groups"}
    names = []
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert {"summary", "description"} <= set(rule["annotations"])
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    for failure in (
        "FailClosedDenies", "JwksStale", "JwksFetch", "RedisFallback", "AuditRefusing",
        "PolicyReloadRejected", "DetectionScorerDown",
    ):  # fmt: skip
        assert any(failure in n for n in names), failure


def test_alert_rules_load_with_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # scripts/test installs Debian's prometheus, which has it
        import pytest

        pytest.skip("promtool not installed (apt-get install prometheus)")
    run = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in run.stdout
