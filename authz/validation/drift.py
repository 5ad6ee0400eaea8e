"""Drift: what a request carries that its contract does not declare.

Used in monitor mode, where a contract is learnt before it is enforced: body fields
the schema does not name (``/items/*/gift_note``: array indices collapsed to ``*``)
are reported so the contract (or the client) can be fixed before enforcing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from authz.validation.jsonbody import escape
from authz.validation.params import properties_of

MAX_FIELDS_PER_BODY = 32
_MAX_DEPTH = 16


def undeclared_fields(instance: Any, schema: Mapping[str, Any]) -> list[str]:
    """Shapes of the body members that ``schema`` does not declare (bounded)."""
    defs = schema.get("$defs", {})
    found: list[str] = []
    for shape in _walk(instance, schema, defs if isinstance(defs, Mapping) else {}, "", 0):
        if shape not in found:
            found.append(shape)
            if len(found) >= MAX_FIELDS_PER_BODY:
                break
    return found


def _walk(
    instance: Any, schema: Mapping[str, Any], defs: Mapping[str, Any], shape: str, depth: int
) -> Iterator[str]:
    if depth > _MAX_DEPTH or not isinstance(schema, Mapping):
        return
    if isinstance(instance, dict):
        props = properties_of(schema, defs)
        patterned = bool(schema.get("patternProperties"))
        for key, value in instance.items():
            child = f"{shape}/{escape(str(key))[:64]}"
            sub = props.get(key)
            if isinstance(sub, Mapping):
                yield from _walk(value, sub, defs, child, depth + 1)
            elif not patterned and sub is None:
                yield child
    elif isinstance(instance, list):
        from authz.validation.params import _resolve

        items = _resolve(schema, defs).get("items")
        if isinstance(items, Mapping):
            for value in instance:
                yield from _walk(value, items, defs, f"{shape}/*", depth + 1)
