"""jsonschema-rs (per request) against jsonschema (the reference): same verdicts.

A corpus of schemas that uses the keywords contracts use, each with hand-picked
edge cases and a few hundred documents generated from its own vocabulary (seeded:
the same corpus every run). Every document goes through the validator the stage
uses (:func:`authz.validation.schema.compile_text`: jsonschema-rs with linear-time
patterns) and through jsonschema's Draft202012Validator.

Patterns here use ASCII text only: ECMA-262 (JSON Schema's regex dialect, which
jsonschema-rs follows) and Python's ``re`` (jsonschema's) differ on what ``\\d``,
``\\w`` and ``\\s`` match beyond ASCII.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from authz.validation.schema import canonical, compile_text

ORDER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {"$ref": "#/$defs/item"},
        },
        "note": {"type": ["string", "null"], "maxLength": 5},
        "express": {"type": "boolean"},
    },
    "$defs": {
        "item": {
            "type": "object",
            "additionalProperties": False,
            "required": ["sku", "qty"],
            "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                "qty": {"type": "integer", "minimum": 1, "maximum": 10},
            },
        }
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "order": ORDER,
    "numbers": {
        "type": "object",
        "properties": {
            "a": {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "multipleOf": 0.5},
            "b": {"type": "integer", "multipleOf": 3},
            "c": {"type": "number", "exclusiveMaximum": 1},
        },
    },
    "strings": {
        "type": "object",
        "properties": {
            "s": {"type": "string", "minLength": 2, "maxLength": 4},
            "e": {"enum": ["red", "green", 3, None, True]},
            "c": {"const": {"k": [1, 2]}},
            "p": {"type": "string", "pattern": "ab+c"},
        },
        "patternProperties": {"^x-": {"type": "integer"}},
    },
    "composition": {
        "oneOf": [
            {"type": "object", "required": ["kind", "n"], "properties": {"kind": {"const": "num"}, "n": {"type": "integer"}}},
            {"type": "object", "required": ["kind", "s"], "properties": {"kind": {"const": "str"}, "s": {"type": "string"}}},
        ],
        "not": {"required": ["forbidden"]},
    },
    "allof-unevaluated": {
        "allOf": [
            {"properties": {"a": {"type": "integer"}}},
            {"properties": {"b": {"type": "string"}}},
        ],
        "unevaluatedProperties": False,
    },
    "arrays": {
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "integer"}],
        "items": {"type": "boolean"},
        "uniqueItems": True,
        "contains": {"const": True},
        "maxContains": 2,
    },
    "conditional": {
        "type": "object",
        "properties": {"country": {"enum": ["US", "CA"]}, "zip": {"type": "string"}},
        "if": {"properties": {"country": {"const": "US"}}, "required": ["country"]},
        "then": {"properties": {"zip": {"pattern": "^[0-9]{5}$"}}},
        "else": {"properties": {"zip": {"pattern": "^[A-Z][0-9][A-Z] ?[0-9][A-Z][0-9]$"}}},
        "dependentRequired": {"zip": ["country"]},
        "propertyNames": {"maxLength": 8},
        "minProperties": 1,
        "maxProperties": 3,
    },
    "recursive": {
        "$ref": "#/$defs/node",
        "$defs": {
            "node": {
                "type": "object",
                "required": ["v"],
                "properties": {"v": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                "additionalProperties": False,
            }
        },
    },
    "nullable-3.0-converted": {"type": ["string", "null"], "enum": ["a", "b", None]},
    "boolean-true": True,  # type: ignore[dict-item]
    "boolean-false": False,  # type: ignore[dict-item]
}  # fmt: skip

EDGE_CASES: dict[str, list[Any]] = {
    "order": [
        {"items": [{"sku": "ABC-12", "qty": 1}]},
        {"items": [{"sku": "ABC-12", "qty": 1.0}]},  # 1.0 is an integer in JSON Schema
        {"items": [{"sku": "ABC-12", "qty": 1.5}]},
        {"items": [{"sku": "abc-12", "qty": 1}]},
        {"items": [{"sku": "ABC-12", "qty": True}]},  # a boolean is not an integer
        {"items": [{"sku": "ABC-12", "qty": 2**70}]},
        {"items": []},
        {"items": [{"sku": "ABC-12", "qty": 1}], "note": None},
        {"items": [{"sku": "ABC-12", "qty": 1}], "admin": True},
        [],
        None,
    ],
    "numbers": [{"a": 0}, {"a": 0.5}, {"a": 100}, {"a": 100.5}, {"a": 1.25}, {"b": 9}, {"b": 9.0}, {"b": 10}, {"c": 1}, {"c": 0.999}, {"a": -1e308}],
    "strings": [{"s": "ab"}, {"s": "é€"}, {"s": "😀😀"}, {"s": "a"}, {"e": None}, {"e": 3.0}, {"e": 1}, {"c": {"k": [1, 2]}}, {"c": {"k": [2, 1]}}, {"p": "xxabbbcxx"}, {"p": "ac"}, {"x-1": 1}, {"x-1": "1"}],
    "composition": [{"kind": "num", "n": 1}, {"kind": "str", "s": "x"}, {"kind": "num", "s": "x"}, {"kind": "num", "n": 1, "forbidden": 1}],
    "allof-unevaluated": [{"a": 1}, {"a": 1, "b": "x"}, {"a": 1, "c": 1}, {}],
    "arrays": [["a", 1, True], ["a", 1, False], ["a", 1, True, True], ["a", 1, True, False, True], [1, 1, True]],
    "conditional": [{"country": "US", "zip": "12345"}, {"country": "US", "zip": "K1A 0B1"}, {"country": "CA", "zip": "K1A 0B1"}, {"zip": "12345"}, {}],
    "recursive": [{"v": 1, "children": [{"v": 2, "children": [{"v": 3}]}]}, {"v": 1, "children": [{"v": "x"}]}],
}  # fmt: skip


def _vocabulary(schema: Any, keys: set[str], strings: set[str]) -> None:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("properties", "patternProperties", "$defs"):
                keys.update(value)
            if isinstance(value, str):
                strings.add(value)
            _vocabulary(value, keys, strings)
    elif isinstance(schema, list):
        for item in schema:
            if isinstance(item, str):
                strings.add(item)
            _vocabulary(item, keys, strings)


def generate(schema: Any, rng: random.Random, count: int) -> list[Any]:
    keys: set[str] = {"x-9", "zz"}
    strings: set[str] = {"", "ABC-12", "12345", "K1A 0B1", "abbc", "US", "CA", "num", "str"}
    _vocabulary(schema, keys, strings)
    key_list, string_list = sorted(keys), sorted(strings)

    def value(depth: int) -> Any:
        kind = rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return rng.choice([0, 1, 2, 3, 5, 9, 10, 11, -1, 100, 101, 2**53 + 1])
        if kind == 1:
            return rng.choice([0.5, 1.0, 1.5, 99.5, 100.0, -0.0, 3.0, 1e-9])
        if kind == 2:
            return rng.choice(string_list)
        if kind == 3:
            return rng.choice([True, False])
        if kind == 4:
            return None
        if kind == 5:
            return "".join(rng.choice("aAbc-Z09 ") for _ in range(rng.randrange(7)))
        if kind in (6, 7):
            return {rng.choice(key_list): value(depth + 1) for _ in range(rng.randrange(4))}
        return [value(depth + 1) for _ in range(rng.randrange(5))]

    return [value(rng.randrange(3)) for _ in range(count)]


def corpus() -> list[tuple[str, Any, list[Any]]]:
    rng = random.Random(20240401)
    return [
        (name, schema, EDGE_CASES.get(name, []) + generate(schema, rng, 400))
        for name, schema in SCHEMAS.items()
    ]


@pytest.mark.parametrize("name,schema,documents", corpus(), ids=list(SCHEMAS))
def test_same_verdicts(name: str, schema: Any, documents: list[Any]) -> None:
    reference = Draft202012Validator(schema)
    fast = compile_text(canonical(schema))
    disagreements = [doc for doc in documents if fast.is_valid(doc) != reference.is_valid(doc)]
    assert disagreements == []
    # and the deny path names a failure exactly when the verdict is a deny
    for doc in documents:
        assert (fast.first_failure(doc) is None) == fast.is_valid(doc)


def test_corpus_has_both_verdicts() -> None:
    total_valid = total_invalid = 0
    for name, schema, documents in corpus():
        reference = Draft202012Validator(schema)
        valid = sum(1 for d in documents if reference.is_valid(d))
        total_valid += valid
        total_invalid += len(documents) - valid
        if name not in ("boolean-true", "boolean-false"):
            assert 0 < valid < len(documents), name
    assert total_valid > 500 and total_invalid > 1500
