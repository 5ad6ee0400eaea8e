"""Route table: (host, method, canonical path) -> the route, or why there is none.

Built once per policy from the compiled :mod:`authz.routeplan` (host groups, route
order), the same plan ``authz envoy-config`` writes Envoy's routes from, so both
pick the same route:

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
from authz.policy.config import RouteConfig
from authz.routeplan import ANY_METHOD, HostGroup, PlannedRoute, RoutePlan, compile_plan

__all__ = ["ANY_METHOD", "Router"]


@dataclass(frozen=True, slots=True)
class _Entry:
    route: RouteConfig
    methods: frozenset[str]

    def allows(self, method: str) -> bool:
        return method in self.methods or ANY_METHOD in self.methods

    @classmethod
    def of(cls, planned: PlannedRoute) -> _Entry:
        return cls(planned.route, frozenset(planned.route.methods))


class _HostTable:
    """The routes that one virtual host serves."""

    __slots__ = ("_literal", "_regex", "_templated")

    def __init__(self, group: HostGroup) -> None:
        # group.routes are in specificity order already (authz.routeplan)
        literal: dict[str, list[_Entry]] = {}
        templated: list[tuple[str, re.Pattern[str], _Entry]] = []
        for planned in group.routes:
            tpl = planned.template
            if tpl.is_literal:
                literal.setdefault(tpl.template, []).append(_Entry.of(planned))
            else:
                templated.append((tpl.pattern, re.compile(tpl.pattern + r"\Z"), _Entry.of(planned)))
        self._literal = {path: tuple(entries) for path, entries in literal.items()}
        self._templated = tuple((rx, entry) for _, rx, entry in templated)
        # One alternation in specificity order: re picks the leftmost alternative
        # that matches, which is exactly "first in order". Group i = template i.
        # The \Z applies to every alternative, so the group that matched is the first
        # template, in specificity order, that matches the whole path.
        self._regex = (
            re.compile(
                "(?:" + "|".join(f"(?P<t{i}>{t[0]})" for i, t in enumerate(templated)) + r")\Z"
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

    __slots__ = ("_lookup", "plan")

    def __init__(self, routes: Iterable[RouteConfig] | RoutePlan) -> None:
        self.plan = routes if isinstance(routes, RoutePlan) else compile_plan(routes)
        self._lookup = self.plan.lookup(_HostTable)

    def table_for(self, host: str) -> _HostTable:
        return self._lookup.get(host)

    def match(self, host: str, method: str, path: str) -> RouteConfig:
        return self._lookup.get(host).match(method, path)
