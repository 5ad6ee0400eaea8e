"""The reason registry: every code used is defined there, and the README shows it."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import authz
from authz import errors
from authz.reasons import REASONS, Reason, markdown_table

ROOT = Path(authz.__file__).parent
README = ROOT.parent / "README.md"


TAKERS = {"_fail", "violation", "ContractViolation", "BodyTooLarge", "UnsupportedMediaType"}


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals at places a reason is given: ``reason=`` keywords, ``reason =``
    assignments, and the first argument of the helpers and errors that take one."""
    found = []
    for node in ast.walk(tree):
        values: list[ast.expr] = []
        if isinstance(node, ast.Call):
            values += [k.value for k in node.keywords if k.arg == "reason"]
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name in TAKERS and node.args:
                values.append(node.args[0])
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            named = any(getattr(t, "id", getattr(t, "attr", "")) == "reason" for t in targets)
            if named and node.value is not None:
                values.append(node.value)
        for value in values:
            found += _strings(value)
    return sorted(found)


def _strings(node: ast.AST) -> list[tuple[int, str]]:
    """Non-empty string constants in ``node``, but not keys read with ``.get(...)``
    (``reason = meta.get("reason", "")`` reads a reason, it does not give one)."""
    if isinstance(node, ast.Constant):
        return [(node.lineno, node.value)] if isinstance(node.value, str) and node.value else []
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get":
        return _strings(node.func)
    return [found for child in ast.iter_child_nodes(node) for found in _strings(child)]


def _literal_codes() -> list[tuple[str, int, str]]:
    return [
        (str(path.relative_to(ROOT)), line, text)
        for path in sorted(ROOT.rglob("*.py"))
        for line, text in _literals(ast.parse(path.read_text()))
    ]


def test_no_reason_is_a_string_literal_at_a_raise_site() -> None:
    assert _literal_codes() == []


def test_the_literal_finder_finds_one() -> None:
    source = (
        'raise InvalidToken("x", reason="token_gone")\n'
        'reason = "a" if x else "b"\n'
        '_fail("token_bad", "detail")\n'
        "raise InvalidToken('x', reason=R.TOKEN_EXPIRED)\n"
        'reason = meta.get("reason", "")\n'
    )
    assert _literals(ast.parse(source)) == [(1, "token_gone"), (2, "a"), (2, "b"), (3, "token_bad")]


def test_every_error_class_has_a_registered_reason_with_its_status() -> None:
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.AuthzError):
            assert cls.reason in REASONS, cls
            assert REASONS[cls.reason].status == cls.status, cls


def test_every_registry_constant_is_in_the_registry() -> None:
    from authz import reasons

    constants = [v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, Reason)]
    assert {r.code for r in constants} == set(REASONS)
    assert all(r.code.isidentifier() and r.code == r.code.lower() for r in constants)


def test_provider_not_allowed_is_gone() -> None:
    assert not hasattr(errors, "ProviderNotAllowed")
    assert "provider_not_allowed" not in REASONS


def test_the_readme_table_is_the_registry() -> None:
    lines = README.read_text().splitlines()
    start = lines.index("## Decisions")
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("| reason"))
    end = first
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    # regenerate with: authz reasons --format markdown
    assert "\n".join(lines[first:end]) == markdown_table()


def test_authz_reasons_prints_every_code() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "authz", "reasons"], capture_output=True, text=True, check=True
    ).stdout
    assert [line.split()[0] for line in out.splitlines()] == list(REASONS)
    assert any(
        line.split()[:3] == ["token_expired", "401", "identity"] for line in out.splitlines()
    )
