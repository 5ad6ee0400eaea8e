"""Canonical request paths: accepted targets, rejected targets, idempotence."""

from __future__ import annotations

import random

import pytest

from authz.errors import InvalidPath
from authz.paths import canonicalize, split_target

ACCEPTED: list[tuple[str, str, str]] = [
    # (target, canonical path, query)
    ("/", "/", ""),
    ("/v1/orders", "/v1/orders", ""),
    ("/v1/orders?limit=10", "/v1/orders", "limit=10"),
    ("/v1/orders?", "/v1/orders", ""),
    ("/v1/orders?a=1?b=2", "/v1/orders", "a=1?b=2"),
    # the query is returned raw, never canonicalised or checked for escapes
    ("/a/b?q=%2f/../", "/a/b", "q=%2f/../"),
    ("/a?next=/x/../y&t=%00", "/a", "next=/x/../y&t=%00"),
    # trailing slash kept
    ("/a/b/", "/a/b/", ""),
    ("/a/", "/a/", ""),
    # repeated slashes merged
    ("//", "/", ""),
    ("//a//b", "/a/b", ""),
    ("/a///b//", "/a/b/", ""),
    # dot segments removed (RFC 3986 5.2.4)
    ("/a/./b", "/a/b", ""),
    ("/a/./b/../c", "/a/c", ""),
    ("/a/b/..", "/a/", ""),
    ("/a/.", "/a/", ""),
    ("/a/..", "/", ""),
    ("/./", "/", ""),
    # '..' above the root stays at the root
    ("/..", "/", ""),
    ("/../..", "/", ""),
    ("/../../etc/passwd", "/etc/passwd", ""),
    ("/a/../../b", "/b", ""),
    # dot segments are removed before slashes are merged, as Envoy does (normalize_path,
    # then merge_slashes): '..' removes the empty segment (differential fuzzing, F1)
    ("/a//../b", "/a/b", ""),
    ("/v1/orders////../..", "/v1/orders/", ""),
    ("/a//b/../../c", "/a/c", ""),
    ("//../a", "/a", ""),
    # segments that merely contain dots are ordinary
    ("/.../", "/.../", ""),
    ("/a/.b/c.", "/a/.b/c.", ""),
    ("/a/..b", "/a/..b", ""),
    # unreserved escapes decoded, in either case
    ("/%7e", "/~", ""),
    ("/%7E", "/~", ""),
    ("/%41%42", "/AB", ""),
    ("/%61bc", "/abc", ""),
    ("/%2d%2E%5f", "/-._", ""),
    ("/ab%2ec", "/ab.c", ""),
    # an encoded dot inside a longer segment is not a dot segment
    ("/a/..%2e", "/a/...", ""),
    # reserved / non-ASCII escapes kept, hex upper-cased
    ("/%c3%a9", "/%C3%A9", ""),
    ("/caf%C3%A9", "/caf%C3%A9", ""),
    ("/%e2%82%ac", "/%E2%82%AC", ""),
    ("/%3f", "/%3F", ""),
    ("/%23", "/%23", ""),
    ("/%20", "/%20", ""),
    ("/%25", "/%25", ""),
    ("/%2541", "/%2541", ""),  # an escaped '%' is never decoded twice
    ("/%f0%9f%98%80", "/%F0%9F%98%80", ""),
]

REJECTED: list[tuple[str, str]] = [
    # (target, why) -- why is a test id only
    ("", "empty target"),
    ("v1/orders", "relative"),
    ("*", "asterisk form"),
    ("http://example.com/a", "absolute form"),
    # encoded '/' and '\'
    ("/a%2fb", "encoded slash lower"),
    ("/a%2Fb", "encoded slash upper"),
    ("/a%5cb", "encoded backslash lower"),
    ("/a%5Cb", "encoded backslash upper"),
    ("/a\\b", "raw backslash"),
    ("/..\\..\\etc", "raw backslash traversal"),
    # a dot segment with a parameter: Envoy resolves '..;' and '.;' as dot segments,
    # servlet containers as well; the service cannot read them unambiguously (F2)
    ("/a/..;/b", "dot-dot with parameter"),
    ("/a/.;/b", "dot with parameter"),
    ("/healthz;/..;/..", "dot-dot with parameter at the end"),
    ("/a/..;x=1", "dot-dot with a named parameter"),
    ("/a/%2e%2e;/b", "encoded dot-dot with parameter"),
    # encoded dot segments
    ("/a/%2e/b", "encoded single dot"),
    ("/%2e/", "encoded single dot at root"),
    ("/a/%2E", "encoded single dot last"),
    ("/a/%2e%2e/b", "encoded dot-dot lower"),
    ("/a/%2e%2E/b", "encoded dot-dot mixed case"),
    ("/a/%2E%2E", "encoded dot-dot upper, last"),
    ("/a/.%2e/b", "half-encoded dot-dot"),
    ("/a/%2e./b", "half-encoded dot-dot other half"),
    ("/a/.%2e", "half-encoded dot-dot last"),
    # NUL and control characters, raw and encoded
    ("/a%00", "encoded NUL"),
    ("/a%00b", "encoded NUL inside"),
    ("/a\x00b", "raw NUL"),
    ("/a\x01", "raw SOH"),
    ("/a\tb", "raw tab"),
    ("/a\nb", "raw LF"),
    ("/a\rb", "raw CR"),
    ("/a\x7f", "raw DEL"),
    ("/a b", "raw space"),
    ("/a%09", "encoded tab"),
    ("/a%0a", "encoded LF"),
    ("/a%0D%0A", "encoded CRLF"),
    ("/a%1f", "encoded US"),
    ("/a%7f", "encoded DEL lower"),
    ("/a%7F", "encoded DEL upper"),
    # invalid UTF-8 in escapes
    ("/%C0%AF", "overlong slash"),
    ("/%c0%ae%c0%ae/", "overlong dots"),
    ("/%E0%80%AF", "overlong 3-byte"),
    ("/%80", "lone continuation byte"),
    ("/a%bfb", "lone continuation byte inside"),
    ("/%C3", "truncated 2-byte sequence"),
    ("/%e2%82", "truncated 3-byte sequence"),
    ("/%ff", "invalid byte ff"),
    ("/%ED%A0%80", "UTF-16 surrogate"),
    # raw non-ASCII
    ("/caf\u00e9", "raw non-ASCII"),
    # fragments
    ("/a#frag", "fragment"),
    ("/a?x=1#frag", "fragment after query"),
    ("/#", "empty fragment"),
    # malformed escapes
    ("/%", "lone percent"),
    ("/a%", "trailing percent"),
    ("/%4", "truncated escape"),
    ("/%4g", "non-hex escape"),
    ("/%%41", "double percent"),
    ("/%zz", "non-hex escape letters"),
]


@pytest.mark.parametrize(("target", "path", "query"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_canonical(target: str, path: str, query: str) -> None:
    assert canonicalize(target) == (path, query)


@pytest.mark.parametrize(("target", "why"), REJECTED, ids=[c[1] for c in REJECTED])
def test_rejected(target: str, why: str) -> None:
    with pytest.raises(InvalidPath) as info:
        canonicalize(target)
    assert info.value.status == 400
    assert info.value.reason == "invalid_path"


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("/a%2fb", "encoded '/'"),
        ("/a%5cb", "encoded '/' or '\\'"),
        ("/a/%2e%2E/b", "encoded dot segment"),
        ("/a%00", "control character"),
        ("/a\tb", "control character"),
        ("/%C0%AF", "UTF-8"),
        ("/a#f", "fragment"),
        ("/a?b#f", "fragment"),
        ("/%4", "malformed"),
        ("x", "absolute path"),
    ],
)
def test_rejection_says_why(target: str, words: str) -> None:
    with pytest.raises(InvalidPath, match=None) as info:
        canonicalize(target)
    assert words in str(info.value)


def test_split_target() -> None:
    assert split_target("/a?b=c?d") == ("/a", "b=c?d")
    assert split_target("/a") == ("/a", "")


# --------------------------------------------------------------------------- property

_ALPHABET = (
    "/", "/", "//", ".", "..", "a", "B", "z", "9", "-", "_", "~", "%", "%2e", "%2E", "%41",
    "%7e", "%25", "%2f", "%5C", "%c3%a9", "%C3", "%a9", "%20", "%3f", "%00", "?", "#", "%0",
    "%4g", "\\", " ", "\t",
)  # fmt: skip


def _random_targets(n: int) -> list[str]:
    rng = random.Random(1234)
    return [
        "/" + "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 14))) for _ in range(n)
    ]


def test_canonicalize_is_idempotent() -> None:
    targets = _random_targets(4000)
    accepted = 0
    rejected = 0
    for target in targets:
        try:
            path, query = canonicalize(target)
        except InvalidPath:
            rejected += 1
            continue
        accepted += 1
        # a canonical path is accepted again, unchanged, with no query
        assert canonicalize(path) == (path, ""), target
        # and it is in canonical form
        assert path.startswith("/")
        assert "//" not in path
        assert "/./" not in path + "/" and "/../" not in path + "/", target
        assert "?" not in path and "#" not in path
        # the query is what followed the first '?'
        assert query == target.partition("?")[2]
    # the generator exercises both outcomes substantially
    assert accepted > 500
    assert rejected > 500
