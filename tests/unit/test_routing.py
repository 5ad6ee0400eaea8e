"""The route table: host selection, path specificity, methods, 404 and 405."""

from __future__ import annotations

import pytest

from authz.errors import MethodNotAllowed, UndeclaredRoute
from authz.policy.config import RouteConfig
from authz.routing import Router


def route(name: str, path: str, *methods: str, hosts: tuple[str, ...] = ()) -> RouteConfig:
    return RouteConfig(name=name, path=path, methods=methods or ("GET",), hosts=hosts, public=True)


def outcome(router: Router, host: str, method: str, path: str) -> str | tuple[int, tuple[str, ...]]:
    try:
        return router.match(host, method, path).name
    except MethodNotAllowed as exc:
        return (405, exc.allowed)
    except UndeclaredRoute:
        return (404, ())


PATHS = Router(
    [
        route("root", "/"),
        route("list", "/v1/orders", "GET"),
        route("create", "/v1/orders", "POST"),
        route("export", "/v1/orders/export", "GET"),
        route("get", "/v1/orders/{id}", "GET", "DELETE"),
        route("items", "/v1/orders/{id}/items", "GET"),
        route("static", "/static/{rest=**}", "GET", "HEAD"),
        route("anything", "/any/{x}", "*"),
        route("slash", "/dir/", "GET"),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/", "root"),
        ("GET", "/v1/orders", "list"),
        ("POST", "/v1/orders", "create"),
        ("GET", "/v1/orders/export", "export"),  # literal beats {id}
        ("GET", "/v1/orders/42", "get"),
        ("DELETE", "/v1/orders/42", "get"),
        ("GET", "/v1/orders/42/items", "items"),
        ("GET", "/static/a", "static"),
        ("HEAD", "/static/a/b/c.css", "static"),
        ("PATCH", "/any/1", "anything"),
        ("GET", "/dir/", "slash"),
        # 404: nothing declares the path
        ("GET", "/v2", (404, ())),
        ("GET", "/v1/orders/", (404, ())),
        ("GET", "/v1/orders/42/items/7", (404, ())),
        ("GET", "/static", (404, ())),
        ("GET", "/any/1/2", (404, ())),
        ("GET", "/dir", (404, ())),
        # 405: the union of the methods every matching route allows
        ("PUT", "/v1/orders", (405, ("GET", "POST"))),
        ("POST", "/v1/orders/42", (405, ("DELETE", "GET"))),
        # {id} also declares /v1/orders/export, so its DELETE is allowed there
        ("DELETE", "/v1/orders/export", "get"),
        ("PUT", "/v1/orders/export", (405, ("DELETE", "GET"))),
        ("POST", "/static/x", (405, ("GET", "HEAD"))),
        ("POST", "/", (405, ("GET",))),
    ],
)
def test_paths_and_methods(method: str, path: str, expected: object) -> None:
    assert outcome(PATHS, "example.com", method, path) == expected


def test_less_specific_route_that_allows_the_method_wins() -> None:
    # Envoy emits routes most specific first, each with its method matcher; the
    # first route whose path AND method match wins.
    router = Router(
        [
            route("lit", "/v1/a/b", "GET"),
            route("param", "/v1/{x}/b", "POST"),
            route("rest", "/v1/{r=**}", "DELETE"),
        ]
    )
    assert outcome(router, "h", "GET", "/v1/a/b") == "lit"
    assert outcome(router, "h", "POST", "/v1/a/b") == "param"
    assert outcome(router, "h", "DELETE", "/v1/a/b") == "rest"
    assert outcome(router, "h", "PUT", "/v1/a/b") == (405, ("DELETE", "GET", "POST"))
    assert outcome(router, "h", "POST", "/v1/z/b") == "param"
    assert outcome(router, "h", "GET", "/v1/z/b") == (405, ("DELETE", "POST"))


def test_declaration_order_does_not_matter() -> None:
    routes = [
        route("rest", "/v1/{r=**}", "GET"),
        route("param", "/v1/{x}", "GET"),
        route("lit", "/v1/me", "GET"),
    ]
    for ordering in (routes, routes[::-1]):
        router = Router(ordering)
        assert outcome(router, "h", "GET", "/v1/me") == "lit"
        assert outcome(router, "h", "GET", "/v1/42") == "param"
        assert outcome(router, "h", "GET", "/v1/42/x") == "rest"


def test_many_templates_pick_the_most_specific() -> None:
    # enough templates that the combined regex and the per-template check must agree
    routes = [route(f"r{i}", f"/t{i}/{{id}}", "GET") for i in range(50)]
    routes.append(route("deep", "/t7/{id}/x/{y}", "GET"))
    routes.append(route("tail", "/t7/{r=**}", "GET"))
    router = Router(routes)
    assert outcome(router, "h", "GET", "/t7/1") == "r7"
    assert outcome(router, "h", "GET", "/t7/1/x/2") == "deep"
    assert outcome(router, "h", "GET", "/t7/1/x") == "tail"
    assert outcome(router, "h", "GET", "/t49/1") == "r49"
    assert outcome(router, "h", "GET", "/t50/1") == (404, ())


HOSTS = Router(
    [
        route("exact", "/x", hosts=("a.api.example.com",)),
        route("wild-long", "/x", hosts=("*.api.example.com",)),
        route("wild-short", "/x", hosts=("*.example.com",)),
        route("any", "/x"),
        route("any-only", "/y"),
        route("exact-only", "/z", hosts=("a.api.example.com",)),
    ]
)


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("a.api.example.com", "/x", "exact"),
        ("A.API.Example.COM", "/x", "exact"),  # host names are case-insensitive
        ("a.api.example.com:8443", "/x", "exact"),  # the port is ignored
        ("b.api.example.com", "/x", "wild-long"),  # longest wildcard suffix
        ("x.y.api.example.com", "/x", "wild-long"),
        ("c.example.com", "/x", "wild-short"),
        ("c.example.com:80", "/x", "wild-short"),
        ("example.com", "/x", "any"),  # *.example.com needs a label before the suffix
        ("other.org", "/x", "any"),
        ("", "/x", "any"),
        ("[::1]:8080", "/x", "any"),
        # routes without hosts apply to every host, including ones with their own routes
        ("a.api.example.com", "/y", "any-only"),
        ("b.api.example.com", "/y", "any-only"),
        ("other.org", "/y", "any-only"),
        # a host-bound route is not visible on other hosts
        ("a.api.example.com", "/z", "exact-only"),
        ("b.api.example.com", "/z", (404, ())),
        ("other.org", "/z", (404, ())),
    ],
)
def test_host_selection(host: str, path: str, expected: object) -> None:
    assert outcome(HOSTS, host, "GET", path) == expected


def test_host_routes_and_any_host_routes_share_methods() -> None:
    router = Router(
        [route("get", "/x", "GET", hosts=("api.example.com",)), route("post", "/x", "POST")]
    )
    assert outcome(router, "api.example.com", "GET", "/x") == "get"
    assert outcome(router, "api.example.com", "POST", "/x") == "post"
    assert outcome(router, "api.example.com", "PUT", "/x") == (405, ("GET", "POST"))
    assert outcome(router, "other", "GET", "/x") == (405, ("POST",))


def test_ipv6_host_with_port() -> None:
    router = Router([route("v6", "/x", hosts=("example.com",)), route("any", "/x", "POST")])
    assert outcome(router, "[::1]:8080", "POST", "/x") == "any"
    assert outcome(router, "EXAMPLE.com:1", "GET", "/x") == "v6"


def test_request_host_port_is_ignored_like_envoy() -> None:
    # Envoy matches virtual hosts with the port stripped; so does the router, and the
    # policy schema refuses a port in route hosts (see test_loader).
    router = Router([route("r", "/x", hosts=("api.example.com",))])
    assert outcome(router, "api.example.com:8443", "GET", "/x") == "r"
    assert outcome(router, "[::1]:8443", "GET", "/x") == (404, ())


def test_root_route_only_matches_root() -> None:
    router = Router([route("root", "/", "GET")])
    assert outcome(router, "h", "GET", "/") == "root"
    assert outcome(router, "h", "GET", "/a") == (404, ())
    assert outcome(router, "h", "DELETE", "/") == (405, ("GET",))


def test_empty_table_is_all_undeclared() -> None:
    router = Router([])
    assert outcome(router, "h", "GET", "/") == (404, ())
