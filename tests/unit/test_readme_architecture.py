"""The README's Architecture section stays true: its reading list names files that
exist, in the order a Check reaches them, and stays short."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def reading_list() -> list[list[str]]:
    items = re.findall(r"^\d+\. (.*)$", _section("Architecture"), flags=re.M)
    return [re.findall(r"`(authz/[\w/]+\.py)`", item) for item in items]


def test_every_file_in_the_reading_list_exists() -> None:
    files = [f for item in reading_list() for f in item]
    assert files, "no reading list found"
    missing = [f for f in files if not (ROOT / f).is_file()]
    assert missing == []


def test_the_reading_list_is_shorter_than_before() -> None:
    # Before the named stages, following one Check meant about 17 files.
    files = [f for item in reading_list() for f in item]
    assert len(files) < 17
    assert len(set(files)) == len(files)


def test_the_reading_list_follows_a_check() -> None:
    files = [f for item in reading_list() for f in item]
    # the transport comes first, the engine before its stages, the record last but one
    order = ["authz/transport/grpc_server.py", "authz/engine.py", "authz/pipeline.py",
             "authz/core_stages.py", "authz/record.py"]  # fmt: skip
    positions = [files.index(f) for f in order]
    assert positions == sorted(positions)


def test_the_diagram_names_modules_that_exist() -> None:
    diagram = re.search(r"```\n(.*?)```", _section("Architecture"), flags=re.S)
    assert diagram is not None
    named = set(re.findall(r"([\w/]+\.py)", diagram.group(1)))
    assert named
    missing = [n for n in named if not (ROOT / "authz" / n).is_file()]
    assert missing == []
