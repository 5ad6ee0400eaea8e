"""Fuzz target 5: the strict JSON body reader.

Only ContractViolation (body_malformed, body_duplicate_key, body_limit_exceeded)
escapes; an accepted body equals ``json.loads`` of the same bytes (types included);
duplicate keys, NaN/Infinity, a byte order mark and lone surrogates are always
refused, wherever in the document they are.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from authz.errors import ContractViolation
from authz.validation.jsonbody import parse_json
from fuzz import targets
from tests.fuzz.profiles import budget

LIMITS = targets.BODY_LIMITS

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
DOCS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def _dumps(doc: Any, data: st.DataObject) -> bytes:
    indent = data.draw(st.sampled_from([None, 0, 2]))
    ascii_only = data.draw(st.booleans())
    return json.dumps(doc, indent=indent, ensure_ascii=ascii_only).encode("utf-8")


@budget(300)
@given(st.binary(max_size=200))
@example(b'{"a": 1, "a": 2}')
@example(b"[NaN]")
@example(b"\xef\xbb\xbf{}")
@example(b'"\\ud800"')
@example(b'"\\ud83d\\ude00"')
@example(b"1e999")
@example(b"[" * 40 + b"]" * 40)
def test_arbitrary_bytes(data: bytes) -> None:
    targets.check_json_body(data)


@budget(150)
@given(DOCS, st.data())
def test_generated_documents_are_accepted_as_json_loads_reads_them(
    doc: Any, data: st.DataObject
) -> None:
    body = _dumps(doc, data)
    targets.check_json_body(body)
    if targets._depth(doc) <= LIMITS.max_depth:
        assert targets.same_json(parse_json(body, LIMITS), json.loads(body))


def _objects(doc: Any) -> list[dict[str, Any]]:
    found = [doc] if isinstance(doc, dict) else []
    children = doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else []
    for child in children:
        found += _objects(child)
    return found


def _refused(body: bytes, reason: str) -> None:
    with pytest.raises(ContractViolation) as err:
        parse_json(body, LIMITS)
    assert err.value.reason == reason, (body, err.value.reason)


@budget(120)
@given(DOCS, st.data())
def test_duplicate_keys_are_refused_anywhere(doc: Any, data: st.DataObject) -> None:
    wrapped = {"doc": doc, "k": 1}
    objects = [o for o in _objects(wrapped) if o]
    target = data.draw(st.sampled_from(objects))
    key = data.draw(st.sampled_from(sorted(target)))
    marker = "__dup_marker__"
    target[marker] = 0
    body = json.dumps(wrapped).encode()
    # the marker member becomes a second copy of an existing key
    body = body.replace(f'"{marker}"'.encode(), json.dumps(key).encode(), 1)
    _refused(body, "body_duplicate_key")


@budget(120)
@given(DOCS, st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]), st.data())
def test_non_finite_numbers_are_refused_anywhere(
    doc: Any, constant: str, data: st.DataObject
) -> None:
    body = json.dumps([doc, "__x__", {"v": "__x__"}]).encode()
    which = data.draw(st.sampled_from([0, 1]))
    parts = body.split(b'"__x__"')
    parts[which] += constant.encode()
    body = b"null".join(parts)
    _refused(body, "body_malformed")


@budget(80)
@given(DOCS, st.data())
def test_byte_order_mark_is_refused(doc: Any, data: st.DataObject) -> None:
    _refused(b"\xef\xbb\xbf" + _dumps(doc, data), "body_malformed")


@budget(120)
@given(DOCS, st.integers(0xD800, 0xDFFF), st.booleans(), st.data())
def test_lone_surrogates_are_refused_anywhere(
    doc: Any, code: int, as_key: bool, data: st.DataObject
) -> None:
    escape = f"\\u{code:04x}" if data.draw(st.booleans()) else f"\\u{code:04X}"
    member = f'{{"{escape}": 1}}' if as_key else f'"a{escape}b"'
    body = json.dumps([doc, "__x__"]).encode().replace(b'"__x__"', member.encode())
    _refused(body, "body_malformed")


def test_surrogate_pair_is_accepted() -> None:
    assert parse_json(b'["\\ud83d\\ude00"]', LIMITS) == ["\U0001f600"]
