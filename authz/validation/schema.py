"""JSON Schema: checked and compiled at policy load, evaluated per request.

Per request the validators are jsonschema-rs's (about 20x faster than jsonschema here);
jsonschema stays the reference, and ``tests/validation/test_differential.py`` shows
both give the same verdicts on a corpus of schemas and documents.

Patterns (``pattern``, ``patternProperties``) use the linear-time regex engine
(:class:`jsonschema_rs.RegexOptions`: no backtracking, so no catastrophic
backtracking on hostile input). A pattern that needs backtracking (look-around,
back-references) is refused at load, with its location, rather than run slowly.
Formats are annotations, as draft 2020-12 says by default: ``format`` is not checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator

from authz.validation.jsonbody import escape

#: jsonschema-rs's error kinds that mean "a member the schema does not allow".
_UNKNOWN_FIELD_KINDS = ("AdditionalProperties", "UnevaluatedProperties")
MAX_POINTER = 512


class SchemaError(ValueError):
    """A schema that cannot be used; ``path`` is where in the schema (JSON path parts)."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


def canonical(schema: Any) -> str:
    """Canonical JSON text of a schema (the form kept in the config)."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@lru_cache(maxsize=1)
def _meta() -> Draft202012Validator:
    return Draft202012Validator(Draft202012Validator.META_SCHEMA)


def problems(schema: Any) -> Iterator[SchemaError]:
    """Every reason ``schema`` cannot be used, each with where in the schema it is."""
    found = False
    for err in _meta().iter_errors(schema):
        found = True
        yield SchemaError(f"not a valid JSON Schema: {err.message}", tuple(err.absolute_path))
    if found:
        return
    yield from _ref_problems(schema, ())
    try:
        compile_text(canonical(schema))
    except SchemaError as exc:
        yield exc


def _ref_problems(node: Any, path: tuple[str | int, ...]) -> Iterator[SchemaError]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                yield SchemaError(
                    "only local references (#/$defs/...) are supported; nothing is fetched",
                    (*path, key),
                )
            elif key in ("$dynamicRef", "$id", "$anchor", "$dynamicAnchor") and path:
                continue
            else:
                yield from _ref_problems(value, (*path, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _ref_problems(item, (*path, i))


@dataclass(frozen=True, slots=True)
class Failure:
    """The first failing location of an instance: reason code and JSON pointer."""

    unknown_field: bool
    pointer: str
    keyword: str


class Validator:
    """A compiled schema: a fast verdict and, for a deny, the first failing location."""

    __slots__ = ("_rs", "is_valid", "schema")

    def __init__(self, schema: Mapping[str, Any], rs: Any) -> None:
        self.schema = schema
        self._rs = rs
        self.is_valid: Callable[[Any], bool] = rs.is_valid

    def first_failure(self, instance: Any) -> Failure | None:
        for err in self._rs.iter_errors(instance):
            kind = type(err.kind).__name__
            pointer = "".join(f"/{escape(str(p))}" for p in err.instance_path)
            unknown = kind in _UNKNOWN_FIELD_KINDS
            if unknown:
                extra = sorted(str(n) for n in (getattr(err.kind, "unexpected", None) or ()))
                if extra:
                    pointer += "/" + escape(extra[0])
            elif kind == "Required":
                missing = getattr(err.kind, "property", None)
                if isinstance(missing, str):
                    pointer += "/" + escape(missing)
            return Failure(unknown, pointer[:MAX_POINTER], kind)
        return None


@lru_cache(maxsize=1024)
def compile_text(text: str) -> Validator:
    """A validator for a schema's canonical text; SchemaError if it cannot be compiled.

    Cached by text, so the loader's check and the stage's build compile once.
    """
    schema = json.loads(text)
    try:
        rs = jsonschema_rs.Draft202012Validator(
            schema, pattern_options=jsonschema_rs.RegexOptions(), validate_formats=False
        )
    except jsonschema_rs.ValidationError as exc:
        path = tuple(exc.instance_path)
        message = str(exc.message)
        if (path and path[-1] == "pattern") or "regex" in message:
            message = (
                "the pattern cannot be run in linear time (look-around and back-references "
                "are not supported) or is not a valid regular expression"
            )
        raise SchemaError(message, path) from None
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        raise SchemaError(f"cannot compile the schema: {exc}") from None
    return Validator(schema, rs)
