"""The README's Observability section stays true: every metric family its table lists
is one the service registers, and it points at the dashboard and alert rules that
exist (their commands run in tests/e2e/test_readme.py)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.telemetry.test_dashboards import registered_families

ROOT = Path(__file__).resolve().parents[2]
SECTION = (ROOT / "README.md").read_text().split("\n## Observability\n", 1)[1].split("\n## ")[0]


def listed() -> list[str]:
    rows = [line for line in SECTION.splitlines() if line.startswith("| `authz_")]
    first_cells = [row.split(" | ")[0] for row in rows]
    return [name for cell in first_cells for name in re.findall(r"`(authz_[a-z0-9_*]+)`", cell)]


def test_every_family_in_the_table_is_registered() -> None:
    families = registered_families()
    names = listed()
    assert len(names) >= 25, names
    for name in names:
        pattern = re.compile(name.replace("*", "[a-z0-9_]+") + "$")
        assert any(pattern.match(f) for f in families), name


def test_the_section_names_the_files_and_the_commands() -> None:
    for path in ("examples/grafana/authz-dashboard.json", "examples/prometheus/authz-alerts.yaml"):
        assert f"]({path})" in SECTION and (ROOT / path).is_file()
    assert "curl -s http://127.0.0.1:9200/metrics" in SECTION
    assert "promtool check rules examples/prometheus/authz-alerts.yaml" in SECTION
    assert '"--metrics", f"127.0.0.1:{METRICS_PORT}"' in (ROOT / "authz/cli/demo.py").read_text()
