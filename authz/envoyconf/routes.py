"""The route configuration: Envoy's routes, written from the compiled route plan.

Host groups and route order come from :mod:`authz.routeplan`, the plan the
service's :class:`authz.routing.Router` is built from, so the two tables cannot
drift: one virtual host per host group (the ``*`` group last); within it, routes
in the plan's specificity order, so Envoy's first match is the service's most
specific match. Each virtual host ends with a catch-all that still calls the
service (which answers 404 ``undeclared_route`` or, in monitor mode, allows).
Here is only how each planned route is expressed in Envoy's terms.
"""

from __future__ import annotations

import re

from envoy_data_plane.envoy.config.route.v3 import (
    HeaderMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.path.match.uri_template.v3 import UriTemplateMatchConfig
from envoy_data_plane.envoy.type.matcher.v3 import RegexMatcher, StringMatcher

from authz.envoyconf.common import (
    ANY_HOST,
    CATCH_ALL_ROUTE,
    UPSTREAM_CLUSTER,
    URI_TEMPLATE_MATCHER,
    EnvoyConfigError,
    extension,
)
from authz.envoyconf.extauthz import (
    body_limit,
    ext_authz_per_route,
    no_body,
    skips_authz,
    with_per_route,
)
from authz.hygiene import strip_patterns
from authz.policy.config import PolicyConfig, RouteConfig
from authz.routeplan import HostGroup, PlannedRoute, RoutePlan, compile_plan
from authz.units import is_dns_name


def _route_match(planned: PlannedRoute) -> RouteMatch:
    template = planned.template
    if template.is_literal:
        match = RouteMatch(path=template.template)
    else:
        match = RouteMatch(
            path_match_policy=extension(
                URI_TEMPLATE_MATCHER,
                UriTemplateMatchConfig(path_template=template.envoy_uri_template),
            )
        )
    methods = planned.methods
    if methods is not None:
        if len(methods) == 1:
            method_matcher = StringMatcher(exact=methods[0])
        else:
            method_matcher = StringMatcher(
                safe_regex=RegexMatcher(regex="|".join(re.escape(m) for m in methods))
            )
        match.headers = [HeaderMatcher(name=":method", string_match=method_matcher)]
    return match


def _envoy_route(planned: PlannedRoute, policy: PolicyConfig) -> Route:
    route = planned.route
    envoy_route = Route(
        name=route.name,
        match=_route_match(planned),
        route=RouteAction(cluster=UPSTREAM_CLUSTER),
    )
    with_per_route(envoy_route, ext_authz_per_route(route, policy))
    if skips_authz(route, policy):
        # ext_authz is not called here, so nothing else strips forged identity headers:
        # authz's own and the exact names of hygiene.strip_headers (prefixes need the
        # service, which names the headers present; see authz.hygiene).
        exact, _ = strip_patterns(policy.hygiene)
        envoy_route.request_headers_to_remove = list(
            dict.fromkeys([*policy.headers.all(), *sorted(exact)])
        )
    return envoy_route


def _empty_rest_guard(planned: PlannedRoute) -> Route | None:
    """For a ``{rest=**}`` template, a route for the path with no rest segment at all.

    Envoy's ``**`` also matches zero segments (``/static/`` for ``/static/{rest=**}``),
    the service's needs one or more. Placed just before the template's own route, this
    sends that path to the service (ext_authz on) instead of, on a public route, past it.
    """
    prefix = planned.empty_rest_prefix
    if prefix is None:
        return None
    if planned.empty_rest_is_literal:
        match = RouteMatch(path=prefix)
    else:
        match = RouteMatch(
            path_match_policy=extension(
                URI_TEMPLATE_MATCHER, UriTemplateMatchConfig(path_template=prefix)
            )
        )
    return Route(name=CATCH_ALL_ROUTE, match=match, route=RouteAction(cluster=UPSTREAM_CLUSTER))


def _catch_all() -> Route:
    # Undeclared paths (and declared paths with another method) still reach the
    # service, which answers 404/405 or, in monitor mode, lets them through.
    return Route(
        name=CATCH_ALL_ROUTE,
        match=RouteMatch(prefix="/"),
        route=RouteAction(cluster=UPSTREAM_CLUSTER),
    )


def _check_host(route: RouteConfig, host: str) -> str:
    name = host.lower()
    wildcard = name.startswith("*.")
    rest = name[2:] if wildcard else name
    if not rest or "*" in rest or not is_dns_name(rest.rstrip(".")):
        where = f" ({route.location})" if route.location else ""
        raise EnvoyConfigError(
            f"route {route.name!r}{where}: host {host!r} is neither a host name nor "
            "'*.' followed by a domain"
        )
    return name


def check_hosts(policy: PolicyConfig) -> None:
    """Every host a route names is one Envoy can match; EnvoyConfigError with the route."""
    for route in policy.routes:
        for host in route.hosts:
            _check_host(route, host)


def _envoy_routes(group: HostGroup, policy: PolicyConfig) -> list[Route]:
    result = []
    for planned in group.routes:
        guard = _empty_rest_guard(planned)
        if guard is not None:
            result.append(guard)
        result.append(_envoy_route(planned, policy))
    result.append(_catch_all())
    if body_limit(policy):
        for envoy_route in result:
            if envoy_route.name == CATCH_ALL_ROUTE:
                with_per_route(envoy_route, no_body())
    return result


def _virtual_host_name(domains: tuple[str, ...]) -> str:
    if domains == (ANY_HOST,):
        return "any_host"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", domains[0]) + (
        f"_and_{len(domains) - 1}_more" if len(domains) > 1 else ""
    )


def route_configuration(policy: PolicyConfig, plan: RoutePlan | None = None) -> RouteConfiguration:
    """The policy's routes; ``plan``: the policy's compiled plan (compiled here if None)."""
    check_hosts(policy)
    plan = compile_plan(policy.routes) if plan is None else plan
    vhosts = []
    for group in plan.groups:
        vhosts.append(
            VirtualHost(
                name=_virtual_host_name(group.domains),
                domains=list(group.domains),
                routes=_envoy_routes(group, policy),
            )
        )
    return RouteConfiguration(name="policy_routes", virtual_hosts=vhosts)
