"""The README's "Data classification" section stays true: its commands run (here,
without the demo stack they do not need; tests/e2e/test_readme.py runs them too), the
report excerpt it shows is what the command prints, and the broken policy it shows
gives exactly the errors it shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECTION = README.split("\n## Data classification\n", 1)[1].split("\n## ", 1)[0]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", SECTION, flags=re.S)


def run(line: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=60
    )


def test_the_commands_run_and_print_the_excerpt() -> None:
    [commands] = blocks("bash")
    lines = [line for line in commands.splitlines() if line.strip()]
    assert [line.split()[:2] for line in lines] == [["authz", "report"], ["authz", "report"]]
    results = [run(line) for line in lines]
    for line, result in zip(lines, results, strict=True):
        assert result.returncode == 0, (line, result.stderr)
    # the excerpt shown after the commands: the tail of the first one's output
    excerpt = blocks("text")[1]
    assert results[0].stdout.endswith(excerpt), results[0].stdout
    assert results[1].stdout.lstrip().startswith("{")


def test_the_broken_policy_gives_the_errors_shown(tmp_path: Path) -> None:
    [policy] = blocks("yaml")
    (tmp_path / "policy.yaml").write_text(policy)
    result = run("authz validate policy.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == blocks("text")[0]


def test_the_rules_table_names_every_class() -> None:
    from authz.policy.classification import CLASSES

    rows = re.findall(r"^\| (`[^|]*`) \|", SECTION, flags=re.M)
    named = {c for row in rows for c in re.findall(r"`(\w+)`", row)}
    assert named == set(CLASSES)
