"""Path templates: parsing, errors, the regex they compile to, their sort order."""

from __future__ import annotations

import re

import pytest

from authz.pathtemplate import LITERAL, PARAM, REST, TemplateError, parse_template


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("v1/orders", "must start with '/'"),
        ("", "must start with '/'"),
        ("{id}", "must start with '/'"),
        ("/v1/x{y}", "must fill the whole segment"),
        ("/v1/{y}x", "must fill the whole segment"),
        ("/v1/{a}{b}", "must fill the whole segment"),
        ("/v1/{1a}", "must fill the whole segment"),
        ("/v1/{a", "must fill the whole segment"),
        ("/{a}/{a}", "appears twice"),
        ("/{a}/x/{a=**}", "appears twice"),
        ("/{rest=**}/x", "must be the last segment"),
        ("/v1/{rest=**}/", "must be the last segment"),
        ("/a//b", "empty segment"),
        ("/a/./b", "dot segments"),
        ("/a/../b", "dot segments"),
        ("/a?x=1", "no query or fragment"),
        ("/a#f", "no query or fragment"),
        ("/a b", "percent-encoded"),
        ("/a%2fb", "percent-encoded"),  # lower-case hex never appears in a canonical path
        ("/caf\u00e9", "percent-encoded"),
    ],
)
def test_template_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        parse_template(template)


def test_segments_and_params() -> None:
    t = parse_template("/v1/{tenant}/files/{path=**}")
    assert t.segments == ((LITERAL, "v1"), (PARAM, "tenant"), (LITERAL, "files"), (REST, "path"))
    assert t.params == ("tenant", "path")
    assert not t.is_literal
    assert t.envoy_uri_template == "/v1/{tenant}/files/{path=**}"
    assert parse_template("/v1/orders").is_literal
    assert parse_template("/v1/{id=*}").envoy_uri_template == "/v1/{id}"


def test_root_template() -> None:
    t = parse_template("/")
    assert t.is_literal
    assert t.segments == ()
    assert re.fullmatch(t.pattern, "/")
    assert not re.fullmatch(t.pattern, "/a")


@pytest.mark.parametrize(
    ("template", "matches", "misses"),
    [
        ("/v1/orders", ["/v1/orders"], ["/v1/orders/", "/v1/orders/1", "/v1/order"]),
        ("/v1/orders/{id}", ["/v1/orders/1", "/v1/orders/%C3%A9"], ["/v1/orders", "/v1/orders/", "/v1/orders/1/x"]),
        ("/v1/{id}/", ["/v1/1/"], ["/v1/1", "/v1//"]),
        # Envoy's '**' also takes a trailing slash (/static/a/): the same route here (F3)
        ("/static/{rest=**}", ["/static/a", "/static/a/b/c", "/static/a/", "/static/a/b/"], ["/static", "/static/", "/staticx/a"]),
        ("/a.b/{x}", ["/a.b/1"], ["/aXb/1"]),  # literal text is escaped in the regex
        ("/v1/a+b", ["/v1/a+b"], ["/v1/aab"]),
    ],
)  # fmt: skip
def test_pattern(template: str, matches: list[str], misses: list[str]) -> None:
    rx = re.compile(parse_template(template).pattern)
    for path in matches:
        assert rx.fullmatch(path), path
    for path in misses:
        assert not rx.fullmatch(path), path


def test_sort_order_literal_before_param_before_rest() -> None:
    templates = [
        "/v1/{rest=**}",
        "/v1/{id}",
        "/v1/orders",
        "/v1/{id}/items",
        "/v1/orders/{id}",
        "/{any}/orders",
        "/{all=**}",
    ]
    ordered = sorted(templates, key=lambda t: parse_template(t).sort_key)
    pos = {t: i for i, t in enumerate(ordered)}
    # at the first segment where they differ: literal < {param} < {rest=**}
    assert pos["/v1/orders"] < pos["/v1/{id}"] < pos["/v1/{rest=**}"]
    assert pos["/v1/orders/{id}"] < pos["/v1/{id}/items"]
    assert pos["/v1/{id}/items"] < pos["/v1/{rest=**}"]
    assert pos["/v1/{rest=**}"] < pos["/{any}/orders"] < pos["/{all=**}"]
