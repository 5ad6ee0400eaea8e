"""Path templates: ``/v1/orders/{id}`` and ``/static/{rest=**}``.

The syntax is Envoy's own URI template syntax, so the same template can be
handed to Envoy's ``uri_template`` matcher and matched here with the same result.
A segment is a literal, ``{name}`` (exactly one non-empty segment) or, as the
last segment only, ``{name=**}`` (one or more segments, and a trailing slash as
Envoy's ``**`` takes one). Templates are parsed and
compiled once, at policy load: :func:`parse_template` is the only parser, and it
remembers what it parsed (a bounded cache), so the loader's checks, the route plan
(:mod:`authz.routeplan`, from which the router and the Envoy routes derive) and the
contract stage share one :class:`PathTemplate` per template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

LITERAL, PARAM, REST = 0, 1, 2

# Characters a canonical path segment may hold literally (RFC 3986 pchar, with
# percent-escapes already normalised by authz.paths).
_LITERAL_RE = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-F]{2})+$")
_PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(?:=(\*\*|\*))?\}$")


class TemplateError(ValueError):
    """A path template that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class PathTemplate:
    template: str
    #: (kind, literal text or parameter name) per segment
    segments: tuple[tuple[int, str], ...]
    #: Ascending order = more specific first (literal < {param} < {rest=**} at the first
    #: segment where two templates differ), the order Envoy's routes are emitted in.
    sort_key: tuple[tuple[int, ...], str]
    #: A regular expression (no anchors) matching exactly the canonical paths of this template.
    pattern: str
    envoy_uri_template: str

    @property
    def is_literal(self) -> bool:
        return all(kind == LITERAL for kind, _ in self.segments)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(text for kind, text in self.segments if kind != LITERAL)


@lru_cache(maxsize=4096)
def parse_template(template: str) -> PathTemplate:
    """Parse and check a template; raises :class:`TemplateError` with the reason."""
    if not template.startswith("/"):
        raise TemplateError("a path template must start with '/'")
    if "?" in template or "#" in template:
        raise TemplateError("a path template has no query or fragment")
    if template == "/":
        return PathTemplate(template, (), ((), template), "/", "/")
    raw_segments = template[1:].split("/")
    trailing_slash = raw_segments[-1] == ""
    if trailing_slash:
        raw_segments.pop()
    segments: list[tuple[int, str]] = []
    names: set[str] = set()
    for index, seg in enumerate(raw_segments):
        if seg == "":
            raise TemplateError("empty segment ('//') in a path template")
        if seg in (".", ".."):
            raise TemplateError("dot segments are not allowed in a path template")
        m = _PARAM_RE.match(seg)
        if m:
            name, op = m.group(1), m.group(2)
            if name in names:
                raise TemplateError(f"parameter {{{name}}} appears twice")
            names.add(name)
            if op == "**":
                if index != len(raw_segments) - 1 or trailing_slash:
                    raise TemplateError(f"{{{name}=**}} must be the last segment")
                segments.append((REST, name))
            else:
                segments.append((PARAM, name))
            continue
        if "{" in seg or "}" in seg:
            raise TemplateError(
                f"segment {seg!r}: a parameter must fill the whole segment, e.g. {{id}}"
            )
        if not _LITERAL_RE.match(seg):
            raise TemplateError(
                f"segment {seg!r} holds characters that must be percent-encoded "
                "(use upper-case hex, e.g. %20)"
            )
        segments.append((LITERAL, seg))

    parts: list[str] = []
    envoy_parts: list[str] = []
    for kind, text in segments:
        if kind == LITERAL:
            parts.append("/" + re.escape(text))
            envoy_parts.append("/" + text)
        elif kind == PARAM:
            parts.append("/[^/]+")
            envoy_parts.append("/{" + text + "}")
        else:
            # (a trailing slash too: Envoy's "**" matches "a/" as it matches "a")
            parts.append("/[^/]+(?:/[^/]+)*/?")
            envoy_parts.append("/{" + text + "=**}")
    suffix = "/" if trailing_slash else ""
    kinds = tuple(kind for kind, _ in segments)
    return PathTemplate(
        template=template,
        segments=tuple(segments),
        sort_key=(kinds + ((LITERAL,) if trailing_slash else ()), template),
        pattern="".join(parts) + suffix,
        envoy_uri_template="".join(envoy_parts) + suffix,
    )
