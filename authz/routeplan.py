"""The compiled route plan: which routes serve which host, in which order, matched how.

One plan per policy, compiled at load. Both route tables derive from it, so they
cannot drift apart: :class:`authz.routing.Router` (the service's table) and the
route configuration ``authz envoy-config`` writes (:mod:`authz.envoyconf.routes`).

- hosts: one host group per distinct table. A host the policy names (exact, or
  ``*.suffix``, compared lower-case) gets its own routes plus the routes for any
  host; hosts whose tables are equal share a group. The group for any host
  (``*``) comes last and holds only the routes declared without hosts.
- lookup: an exact host beats the longest ``*.suffix`` wildcard that is a proper
  suffix, which beats the ``*`` group; a port on the host is ignored.
- order: within a group, routes are in specificity order (literal < ``{param}`` <
  ``{rest=**}`` at the first segment where two templates differ; ties keep policy
  order), so the first route matching path and method is the most specific one.
- match form: each route's template (literal path or URI template), its methods
  (None: any method) and, for ``{rest=**}`` templates, what Envoy's ``**`` matches
  beyond the service's: no rest segment at all, and a trailing ``/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from authz.pathtemplate import LITERAL, REST, PathTemplate, parse_template
from authz.policy.config import RouteConfig
from authz.units import authority_host

ANY_HOST = "*"
ANY_METHOD = "*"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PlannedRoute:
    """One policy route with its parsed template and match form."""

    route: RouteConfig
    template: PathTemplate
    #: The declared methods, sorted and without repeats; None: any method.
    methods: tuple[str, ...] | None

    @property
    def name(self) -> str:
        return self.route.name

    def allows(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    @property
    def is_rest(self) -> bool:
        """A ``{rest=**}`` template (one or more trailing segments)."""
        return bool(self.template.segments) and self.template.segments[-1][0] == REST

    @property
    def ends_with_slash(self) -> bool:
        """The template's paths end with ``/`` (``/a/b/``, ``/``)."""
        return self.template.template.endswith("/")

    @property
    def empty_rest_prefix(self) -> str | None:
        """For ``/a/{rest=**}``: ``/a/`` (a literal path or a URI template); else None."""
        segments = self.template.segments
        if not segments or segments[-1][0] != REST:
            return None
        return self.template.envoy_uri_template.rsplit("/", 1)[0] + "/"

    @property
    def empty_rest_is_literal(self) -> bool:
        return all(kind == LITERAL for kind, _ in self.template.segments[:-1])


@dataclass(frozen=True, slots=True)
class HostGroup:
    """The routes some hosts share, most specific first."""

    #: Lower-case host names and ``*.suffix`` wildcards; ``("*",)`` for any host.
    domains: tuple[str, ...]
    routes: tuple[PlannedRoute, ...]


class HostLookup(Generic[T]):
    """A value per host group, selected by a request's host (the plan's host rules)."""

    __slots__ = ("_by_domain", "_default", "_single", "_wildcards")

    def __init__(self, groups: tuple[HostGroup, ...], values: Sequence[T]) -> None:
        pairs = list(zip(groups, values, strict=True))
        self._default = values[-1]
        self._single = len(groups) == 1
        self._by_domain = {d: v for g, v in pairs[:-1] for d in g.domains if not d.startswith("*.")}
        self._wildcards = sorted(
            ((d[1:], v) for g, v in pairs[:-1] for d in g.domains if d.startswith("*.")),
            key=lambda item: -len(item[0]),  # longest suffix first
        )

    def get(self, host: str) -> T:
        if self._single:
            return self._default
        name = authority_host(host)
        value = self._by_domain.get(name)
        if value is not None:
            return value
        for suffix, value in self._wildcards:
            if name.endswith(suffix) and len(name) > len(suffix):
                return value
        return self._default


class RoutePlan:
    """Host groups (the ``*`` group last) and how a request's host selects one."""

    __slots__ = ("_lookup", "groups")

    def __init__(self, groups: tuple[HostGroup, ...]) -> None:
        self.groups = groups
        self._lookup = HostLookup(groups, groups)

    @property
    def any_host(self) -> HostGroup:
        return self.groups[-1]

    def group_for(self, host: str) -> HostGroup:
        """The group that serves requests for ``host`` (a Host/:authority value)."""
        return self._lookup.get(host)

    def lookup(self, build: Callable[[HostGroup], T]) -> HostLookup[T]:
        """``build(group)`` for every group, selected by host the way ``group_for`` is."""
        return HostLookup(self.groups, [build(g) for g in self.groups])


def _planned(route: RouteConfig) -> PlannedRoute:
    methods = None if ANY_METHOD in route.methods else tuple(sorted(set(route.methods)))
    return PlannedRoute(route, parse_template(route.path), methods)


def _in_order(routes: Iterable[PlannedRoute]) -> tuple[PlannedRoute, ...]:
    return tuple(sorted(routes, key=lambda p: p.template.sort_key))


def compile_plan(routes: Iterable[RouteConfig]) -> RoutePlan:
    """Compile the plan; raises TemplateError for a template the loader let through."""
    planned = [_planned(r) for r in routes]
    any_host = [p for p in planned if not p.route.hosts]
    own: dict[str, list[PlannedRoute]] = {}
    for p in planned:
        for host in p.route.hosts:
            entries = own.setdefault(host.lower(), [])
            if p not in entries:
                entries.append(p)
    tables: dict[tuple[int, ...], tuple[list[str], tuple[PlannedRoute, ...]]] = {}
    index = {id(p): i for i, p in enumerate(planned)}
    for name, entries in own.items():
        ordered = _in_order(entries + any_host)
        key = tuple(index[id(p)] for p in ordered)
        tables.setdefault(key, ([], ordered))[0].append(name)
    groups = [HostGroup(tuple(names), ordered) for names, ordered in tables.values()]
    groups.append(HostGroup((ANY_HOST,), _in_order(any_host)))
    return RoutePlan(tuple(groups))
