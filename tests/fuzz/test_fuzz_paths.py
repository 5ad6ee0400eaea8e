"""Fuzz target 3: the path canonicaliser against an RFC 3986 reference model.

``canonicalize`` raises nothing but InvalidPath; what it returns holds no ``//``,
dot segment, NUL, backslash or encoded slash, is its own canonical form, and is
what the reference model (decode unreserved escapes, merge slashes, RFC 3986
5.2.4 remove_dot_segments written as the RFC writes it) makes of the input.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from authz.errors import InvalidPath
from authz.paths import canonicalize
from fuzz import targets
from tests.fuzz.profiles import DataChooser, budget

# The characters (and escapes) that make paths interesting, as whole tokens.
_PIECES = st.sampled_from(
    [
        "/",
        "/",
        "/",
        ".",
        "..",
        "a",
        "b",
        "%2e",
        "%2E",
        "%2f",
        "%5C",
        "%41",
        "%7e",
        "%7E",
        "%20",
        "%00",
        "%zz",
        "%",
        "%C3%A9",
        "%C3",
        "%FF",
        "~",
        "-",
        "_",
        "?",
        "#",
        "\\",
        ";",
        "=",
        "&",
        " ",
        "\t",
        "é",
        ":",
        "@",
        "!",
        "$",
        "'",
        "(",
        "*",
        "+",
        ",",
    ]
)
PATHS = st.lists(_PIECES, max_size=16).map("".join).map(lambda p: "/" + p)


@budget(300)
@given(PATHS)
@example("/a//../b")  # F1: dot segments before merging slashes
@example("/a/..;/b")  # F2: refused
@example("/a/b/../../..")
@example("/a/./b/.")
@example("/%7Euser/%2e%2E/x")
@example("/%41%42/%c3%a9")
def test_canonical_properties(target: str) -> None:
    targets.check_path(target)


@budget(200)
@given(st.text(max_size=40))
def test_arbitrary_text(text: str) -> None:
    targets.check_path(text)
    targets.check_path("/" + text)


@budget(150)
@given(st.data())
def test_twisted_route_paths(data: st.DataObject) -> None:
    c = DataChooser(data)
    targets.check_path(targets.twist_path(c.pick(targets.PATHS), c))


# The reference model itself, on the examples of RFC 3986 5.2.4 and 5.4.
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/b/c/./../../g", "/a/g"),
        ("mid/content=5/../6", "mid/6"),
        ("/b/c/./g", "/b/c/g"),
        ("/b/c/../g", "/b/g"),
        ("/b/c/..", "/b/"),
        ("/b/c/.", "/b/c/"),
        ("/../g", "/g"),
        ("/./g", "/g"),
        ("/g.", "/g."),
        ("/..g", "/..g"),
        ("/b/c/g;x=1/../y", "/b/c/y"),
    ],
)
def test_reference_model_follows_rfc_3986(path: str, expected: str) -> None:
    assert targets.reference_remove_dot_segments(path) == expected


@pytest.mark.parametrize(
    "target",
    ["/a/%2F/b", "/a\\b", "/a/%00", "/%2e%2e/etc", "a/b", "/é", "/a#b", "/%zz", "/%C3"],
)
def test_refused_paths_raise_invalid_path(target: str) -> None:
    with pytest.raises(InvalidPath):
        canonicalize(target)
