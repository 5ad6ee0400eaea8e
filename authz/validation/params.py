"""Typed parameters: query strings, form fields, path segments and headers -> values.

A parameter arrives as text; its schema's ``type`` says what it must be. The text
is converted to that type (``integer``, ``number``, ``boolean``, ``string``; an
``array`` of them for query parameters and form fields given several times, the
OpenAPI ``form``/``explode`` style) and the value is then checked against the
schema. Text that does not convert is invalid; a scalar parameter given twice is
refused rather than guessed at (which copy would the upstream read?).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from authz.errors import ContractViolation
from authz.reasons import Reason

_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,30})\Z")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,30})(?:\.[0-9]{1,30})?(?:[eE][+-]?[0-9]{1,3})?\Z")
_QUERY_SEPARATOR = re.compile(r"[&]")


class NotConvertible(ValueError):
    """The text is not a value of any of the parameter's types."""


def _to_integer(text: str) -> Any:
    if not _INTEGER.match(text):
        raise NotConvertible
    return int(text)


def _to_number(text: str) -> Any:
    if not _NUMBER.match(text):
        raise NotConvertible
    if _INTEGER.match(text):
        return int(text)
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise NotConvertible
    return value


def _to_boolean(text: str) -> Any:
    if text == "true":
        return True
    if text == "false":
        return False
    raise NotConvertible


def _to_string(text: str) -> Any:
    return text


def _to_null(text: str) -> Any:
    if text == "":
        return None
    raise NotConvertible


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "integer": _to_integer,
    "number": _to_number,
    "boolean": _to_boolean,
    "string": _to_string,
    "null": _to_null,
}


@dataclass(frozen=True, slots=True)
class Converter:
    """How the text of one parameter becomes a value (prepared at load)."""

    scalar: tuple[Callable[[str], Any], ...]  # tried in order; empty: the text itself
    array: bool = False  # the parameter may be given several times (query, form)
    items: tuple[Callable[[str], Any], ...] = ()

    def one(self, text: str, converters: tuple[Callable[[str], Any], ...]) -> Any:
        if not converters:
            return text
        for convert in converters:
            try:
                return convert(text)
            except (NotConvertible, ValueError):
                continue
        raise NotConvertible

    def convert(self, values: list[str]) -> Any:
        """The value of a parameter given ``values`` (one per occurrence)."""
        if self.array:
            return [self.one(v, self.items) for v in values]
        if len(values) != 1:
            raise DuplicateParameter
        return self.one(values[0], self.scalar)


class DuplicateParameter(ValueError):
    """A scalar parameter was given more than once."""


def _types(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> tuple[str, ...]:
    """The JSON types a schema names at its top (following local $refs)."""
    seen = 0
    while "$ref" in schema and seen < 16:
        ref = str(schema["$ref"])
        target = defs.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/$defs/") else None
        if not isinstance(target, Mapping):
            break
        schema = target
        seen += 1
    declared = schema.get("type")
    if isinstance(declared, str):
        return (declared,)
    if isinstance(declared, list):
        return tuple(str(t) for t in declared)
    if "enum" in schema or "const" in schema:
        values = [*schema.get("enum", ()), *([schema["const"]] if "const" in schema else [])]
        kinds: list[str] = []
        for value in values:
            kind = _json_type(value)
            if kind not in kinds:
                kinds.append(kind)
        return tuple(kinds)
    return ()


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    return "string"


def _scalar_converters(types: tuple[str, ...]) -> tuple[Callable[[str], Any], ...]:
    if not types or "string" in types:
        # A string is any text: a conversion would only lose information.
        return ()
    order = ("integer", "number", "boolean", "null")
    return tuple(_CONVERTERS[t] for t in order if t in types)


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    for _ in range(16):
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
            break
        target = defs.get(ref.rsplit("/", 1)[-1])
        if not isinstance(target, Mapping):
            break
        schema = target
    return schema


def converter_for(
    schema: Mapping[str, Any] | None, defs: Mapping[str, Any], *, repeatable: bool
) -> Converter:
    """The converter of a parameter (or form field) with this schema."""
    if schema is None:
        return Converter(scalar=())
    schema = _resolve(schema, defs)
    types = _types(schema, defs)
    if repeatable and "array" in types:
        items = schema.get("items")
        item_types = _types(items, defs) if isinstance(items, Mapping) else ()
        return Converter(scalar=(), array=True, items=_scalar_converters(item_types))
    return Converter(scalar=_scalar_converters(types))


def properties_of(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``properties`` of an object schema (following local $refs and allOf)."""
    schema = _resolve(schema, defs)
    found: dict[str, Any] = {}
    for part in schema.get("allOf", ()):
        if isinstance(part, Mapping):
            found.update(properties_of(part, defs))
    props = schema.get("properties")
    if isinstance(props, Mapping):
        found.update(props)
    return found


def parse_pairs(text: str, *, max_fields: int, plus_is_space: bool = True) -> list[tuple[str, str]]:
    """``a=1&b=2`` -> [("a", "1"), ("b", "2")], strictly: UTF-8 escapes only.

    Raises ValueError (invalid escape or UTF-8) or OverflowError (too many fields).
    """
    if not text:
        return []
    parts = text.split("&")
    if len(parts) > max_fields:
        raise OverflowError
    pairs: list[tuple[str, str]] = []
    for part in parts:
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_unescape(name, plus_is_space), _unescape(value, plus_is_space)))
    return pairs


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _unescape(text: str, plus_is_space: bool) -> str:
    if plus_is_space and "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    if _BAD_ESCAPE.search(text):
        raise ValueError("malformed percent-escape")
    return unquote(text, errors="strict")


def group(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped


def violation(reason: Reason, part: str, name: str, detail: str) -> ContractViolation:
    from authz.validation.jsonbody import escape

    return ContractViolation(reason, detail, part=part, pointer="/" + escape(name)[:128])
