"""Small single-purpose modules: no module under ``authz/`` is longer than
:data:`MAX_LINES`, unless its docstring says "Over 400 lines" and why.

Generated protobuf modules (``*_pb2*.py``) are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import authz

ROOT = Path(authz.__file__).parent
#: ~400, with a little room so a small fix does not force a split.
MAX_LINES = 420
EXEMPTION = "Over 400 lines"


def too_long(root: Path, max_lines: int = MAX_LINES) -> list[str]:
    """``path: N lines`` for every module under ``root`` over ``max_lines`` whose
    docstring does not say it is (and why)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        if "_pb2" in path.name:
            continue
        text = path.read_text()
        lines = len(text.splitlines())
        if lines <= max_lines:
            continue
        docstring = ast.get_docstring(ast.parse(text, str(path))) or ""
        if EXEMPTION in docstring:
            continue
        out.append(f"{path.relative_to(root.parent)}: {lines} lines (at most {max_lines})")
    return out


def test_no_module_is_over_the_bound() -> None:
    found = too_long(ROOT)
    assert not found, "split these, or say why in the docstring:\n" + "\n".join(found)


def test_the_bound_finds_a_long_module(tmp_path: Path) -> None:
    pkg = tmp_path / "authz"
    pkg.mkdir()
    (pkg / "long.py").write_text('"""A long module."""\n' + "x = 1\n" * MAX_LINES)
    (pkg / "short.py").write_text('"""A short module."""\n')
    (pkg / "big_pb2.py").write_text("x = 1\n" * (MAX_LINES + 10))
    assert too_long(pkg) == [f"authz/long.py: {MAX_LINES + 1} lines (at most {MAX_LINES})"]
    with pytest.raises(AssertionError, match=r"authz/long\.py: 421 lines"):
        assert too_long(pkg) == []


def test_a_docstring_that_says_why_exempts_it(tmp_path: Path) -> None:
    pkg = tmp_path / "authz"
    pkg.mkdir()
    exempt = f'"""One class.\n\n{EXEMPTION}: one cohesive state machine."""\n'
    (pkg / "exempt.py").write_text(exempt + "x = 1\n" * MAX_LINES)
    # the phrase in a comment, not the docstring, does not count
    (pkg / "comment.py").write_text(f'"""Long."""\n# {EXEMPTION}\n' + "x = 1\n" * MAX_LINES)
    assert too_long(pkg) == [f"authz/comment.py: {MAX_LINES + 2} lines (at most {MAX_LINES})"]
