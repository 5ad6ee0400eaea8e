"""authz.routeplan: host groups, order and lookup, the one plan both route tables use."""

from __future__ import annotations

from authz.policy.config import RouteConfig
from authz.routeplan import ANY_HOST, compile_plan
from authz.routing import Router


def route(name: str, path: str, *methods: str, hosts: tuple[str, ...] = ()) -> RouteConfig:
    return RouteConfig(name=name, path=path, methods=methods or ("GET",), hosts=hosts)


ROUTES = (
    route("any-item", "/items/{id}"),
    route("api-item", "/items/{id}", hosts=("API.example.com",)),
    route("export", "/items/export", hosts=("api.example.com", "*.example.com")),
    route("wild", "/wild", hosts=("*.example.com",)),
    route("deep-wild", "/wild", hosts=("*.b.example.com",)),
    route("twin", "/twin", hosts=("a.test", "b.test")),
    route("health", "/healthz"),
    route("files", "/files/{rest=**}", "*"),
)


def names(group_routes: object) -> list[str]:
    return [p.name for p in group_routes]  # type: ignore[attr-defined]


def test_groups_share_equal_tables_and_any_host_is_last() -> None:
    plan = compile_plan(ROUTES)
    tables = {g.domains: names(g.routes) for g in plan.groups}
    assert tables == {
        ("api.example.com",): ["health", "export", "api-item", "any-item", "files"],
        ("*.example.com",): ["health", "wild", "export", "any-item", "files"],
        ("*.b.example.com",): ["health", "deep-wild", "any-item", "files"],
        ("a.test", "b.test"): ["health", "twin", "any-item", "files"],
        (ANY_HOST,): ["health", "any-item", "files"],
    }
    assert plan.groups[-1] is plan.any_host


def test_group_lookup() -> None:
    plan = compile_plan(ROUTES)
    by = {g.domains[0]: g for g in plan.groups}
    assert plan.group_for("API.example.com:8443") is by["api.example.com"]
    assert plan.group_for("x.example.com") is by["*.example.com"]
    assert plan.group_for("x.b.example.com") is by["*.b.example.com"]  # longest suffix
    assert plan.group_for("b.example.com") is by["*.example.com"]  # not *.b's own domain
    assert plan.group_for("example.com") is by[ANY_HOST]  # a wildcard needs a label
    assert plan.group_for("b.test") is by["a.test"]
    assert plan.group_for("[::1]:80") is by[ANY_HOST]


def test_match_form() -> None:
    plan = compile_plan(ROUTES)
    files = next(p for p in plan.any_host.routes if p.name == "files")
    assert files.methods is None and files.allows("PATCH")
    assert files.is_rest and files.empty_rest_prefix == "/files/" and files.empty_rest_is_literal
    item = next(p for p in plan.any_host.routes if p.name == "any-item")
    assert item.methods == ("GET",) and not item.allows("POST")
    assert item.empty_rest_prefix is None and not item.is_rest


def test_router_uses_the_plan_it_is_given() -> None:
    plan = compile_plan(ROUTES)
    router = Router(plan)
    assert router.plan is plan
    assert router.match("x.b.example.com", "GET", "/wild").name == "deep-wild"
    assert Router(ROUTES).match("x.b.example.com", "GET", "/wild").name == "deep-wild"
