"""Reading policy documents, shared by every policy loader.

The YAML reader that keeps each value's position, the JSON path notation problems
are reported with, and the policy's value parsers. :mod:`authz.policy.loader`,
:mod:`authz.policy.openapi` and :mod:`authz.policy.ratelimit_loader` import these
public names; none imports another loader's private helpers.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import yaml

from authz.errors import PolicyError
from authz.units import parse_duration as _parse_duration

JsonPath = tuple[str | int, ...]


Marks = dict[JsonPath, tuple[int, int]]


def parse_yaml(data: bytes, source: str) -> tuple[Any, Marks, Marks]:
    """The document, the (line, column) of each value, and of each mapping key."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([(source, f"the file is not UTF-8 (byte {exc.start})")]) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError([(loc, f"invalid YAML: {problem}")]) from exc
    if node is None:
        raise PolicyError([(source, "the policy file is empty")])
    marks: Marks = {}
    key_marks: Marks = {}
    problems: list[tuple[str, str]] = []
    constructor = yaml.SafeLoader("")

    def at(n: yaml.Node) -> str:
        return f"{source}:{n.start_mark.line + 1}:{n.start_mark.column + 1}"

    def scalar(n: yaml.Node, jpath: JsonPath) -> Any:
        try:
            return constructor.construct_object(n, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            problems.append((at(n), f"{json_path(jpath)}: cannot read this value: {problem}"))
            return None

    def convert(n: yaml.Node, jpath: JsonPath) -> Any:
        marks[jpath] = (n.start_mark.line + 1, n.start_mark.column + 1)
        if isinstance(n, yaml.MappingNode):
            explicit = sum(1 for k, _ in n.value if k.tag != "tag:yaml.org,2002:merge")
            try:
                constructor.flatten_mapping(n)  # resolve '<<: *anchor' merge keys
            except yaml.YAMLError as exc:
                problems.append((at(n), f"{json_path(jpath)}: {getattr(exc, 'problem', exc)}"))
                return {}
            merged = len(n.value) - explicit  # merged entries come first; later keys win
            out: dict[str, Any] = {}
            for index, (key_node, value_node) in enumerate(n.value):
                key = scalar(key_node, jpath)
                if not isinstance(key, str):
                    problems.append((at(key_node), f"{json_path(jpath)}: keys must be strings"))
                    continue
                if key in out and index >= merged and (*jpath, key) in key_marks:
                    problems.append((at(key_node), f"{json_path(jpath)}: duplicate key {key!r}"))
                    continue
                if index >= merged:
                    key_marks[(*jpath, key)] = (
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                    )
                out[key] = convert(value_node, (*jpath, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [convert(item, (*jpath, i)) for i, item in enumerate(n.value)]
        value = scalar(n, jpath)
        if isinstance(value, datetime | date):
            return value.isoformat()  # dates stay strings; parsed where expected
        return value

    doc = convert(node, ())
    if problems:
        raise PolicyError(problems)
    return doc, marks, key_marks


def json_path(jpath: JsonPath) -> str:
    out = "$"
    for part in jpath:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_duration(value: float | int | str) -> float:
    """A policy duration: seconds as a number >= 0, or a string such as ``30s``, ``5m``,
    ``500ms`` (the schema's form: a unit is required); raises ValueError."""
    try:
        return _parse_duration(value, unit_required=True)
    except ValueError:
        raise ValueError(f"invalid duration {value!r}") from None
