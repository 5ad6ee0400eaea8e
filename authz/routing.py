"""Route table: (host, method, canonical path) -> the route, or why there is none.

Built once per policy. Semantics match the Envoy config that
``authz envoy-config`` generates, so both pick the same route:

- hosts: an exact host beats the longest ``*.suffix`` wildcard, which beats the
  routes for any host; routes declared without hosts apply to every host;
- paths: literal templates are a dict lookup; templated routes are tried in
  specificity order (literal < ``{param}`` < ``{rest=**}`` at the first segment
  where they differ) and the first that matches both path and method wins;
- a path that some route declares but not for this method is a 405.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from authz.errors import MethodNotAllowed, UndeclaredRoute
from authz.pathtemplate import parse_template
from authz.policy.config import RouteConfig

ANY_METHOD = "*"


@dataclass(frozen=True, slots=True)
class _Entry:
    route: RouteConfig
    methods: frozenset[str]

    def allows(self, method: str) -> bool:
        return method in self.methods or ANY_METHOD in self.methods


class _HostTable:
    """The routes that one virtual host serves."""

    __slots__ = ("_literal", "_regex", "_templated")

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        literal: dict[str, list[_Entry]] = {}
        templated: list[tuple[tuple[tuple[int, ...], str], str, re.Pattern[str], _Entry]] = []
        for route in routes:
            tpl = parse_template(route.path)
            entry = _Entry(route, frozenset(route.methods))
            if tpl.is_literal:
                literal.setdefault(route.path, []).append(entry)
            else:
                templated.append(
                    (tpl.sort_key, tpl.pattern, re.compile(tpl.pattern + r"\Z"), entry)
                )
        templated.sort(key=lambda t: t[0])
        self._literal = {path: tuple(entries) for path, entries in literal.items()}
        self._templated = tuple((rx, entry) for _, _, rx, entry in templated)
        # One alternation in specificity order: re picks the leftmost alternative
        # that matches, which is exactly "first in order". Group i = template i.
        # The \Z applies to every alternative, so the group that matched is the first
        # template, in specificity order, that matches the whole path.
        self._regex = (
            re.compile(
                "(?:" + "|".join(f"(?P<t{i}>{t[1]})" for i, t in enumerate(templated)) + r")\Z"
            )
            if templated
            else None
        )

    def match(self, method: str, path: str) -> RouteConfig:
        entries = self._literal.get(path)
        allowed: list[str] = []
        if entries is not None:
            for entry in entries:
                if entry.allows(method):
                    return entry.route
                allowed.extend(entry.methods)
        if self._regex is not None:
            m = self._regex.match(path)
            if m is not None:
                first = int(m.lastgroup[1:]) if m.lastgroup else 0
                entry = self._templated[first][1]
                if entry.allows(method):  # the common case: no second match needed
                    return entry.route
                for rx, entry in self._templated[first:]:
                    if rx.match(path) is None:
                        continue
                    if entry.allows(method):
                        return entry.route
                    allowed.extend(entry.methods)
        if allowed:
            raise MethodNotAllowed(tuple(sorted(set(allowed))))
        raise UndeclaredRoute("no route declares this path")


class Router:
    """Selects the route for a request; raises UndeclaredRoute or MethodNotAllowed."""

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        routes = tuple(routes)
        any_host = [r for r in routes if not r.hosts]
        names: list[str] = []
        for r in routes:
            for h in r.hosts:
                if h.lower() not in names:
                    names.append(h.lower())
        tables: dict[str, _HostTable] = {}
        for name in names:
            own = [r for r in routes if name in (h.lower() for h in r.hosts)]
            tables[name] = _HostTable(own + any_host)
        self._exact = {n: t for n, t in tables.items() if not n.startswith("*.")}
        # longest suffix first
        self._wildcards = sorted(
            ((n[1:], t) for n, t in tables.items() if n.startswith("*.")),
            key=lambda item: -len(item[0]),
        )
        self._default = _HostTable(any_host)

    def table_for(self, host: str) -> _HostTable:
        if not self._exact and not self._wildcards:
            return self._default
        name = host.lower()
        if name.startswith("["):  # [v6]:port
            name = name.split("]", 1)[0] + "]"
        else:
            name = name.rsplit(":", 1)[0] if ":" in name else name
        table = self._exact.get(name)
        if table is not None:
            return table
        for suffix, table in self._wildcards:
            if name.endswith(suffix) and len(name) > len(suffix):
                return table
        return self._default

    def match(self, host: str, method: str, path: str) -> RouteConfig:
        return self.table_for(host).match(method, path)
