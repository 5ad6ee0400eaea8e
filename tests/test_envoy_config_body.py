"""The generated Envoy config sends the body only where a contract validates it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from authz.envoyconf import EXT_AUTHZ_FILTER, EnvoyOptions, build_bootstrap, render_yaml
from authz.policy.config import ContractConfig, JsonSchema, Parameter, PolicyConfig, RouteConfig
from authz.policy.loader import load_policy
from tests.test_envoy_config import envoy_validate, ext_authz, vhosts

REPO = Path(__file__).resolve().parent.parent
BODY = ContractConfig(body=JsonSchema(text='{"type":"object"}'), max_body_bytes=4096)
PARAMS_ONLY = ContractConfig(parameters=(Parameter(name="q", where="query"),))


def policy(*routes: RouteConfig) -> PolicyConfig:
    return PolicyConfig(version="v", source="s", routes=routes)


ROUTES = (
    RouteConfig(name="create", path="/orders", methods=("POST",), providers=("p",), contract=BODY),
    RouteConfig(name="upload", path="/upload", methods=("POST",), providers=("p",)),
    RouteConfig(name="search", path="/search", methods=("GET",), public=True, contract=PARAMS_ONLY),
    RouteConfig(name="health", path="/healthz", methods=("GET",), public=True),
    RouteConfig(name="files", path="/files/{rest=**}", methods=("GET",), providers=("p",)),
    RouteConfig(
        name="big", path="/big", methods=("PUT",), providers=("p",),
        contract=ContractConfig(body=JsonSchema(text="true"), max_body_bytes=100_000),
    ),
)  # fmt: skip


def per_route(route: dict[str, Any]) -> dict[str, Any] | None:
    found: dict[str, Any] | None = route.get("typed_per_filter_config", {}).get(EXT_AUTHZ_FILTER)
    return found


def test_body_only_on_routes_that_validate_it() -> None:
    config = build_bootstrap(policy(*ROUTES), EnvoyOptions())
    # The filter packs bodies as raw bytes (Envoy reads pack_as_bytes there only) ...
    assert ext_authz(config)["with_request_body"] == {
        "max_request_bytes": 100_000, "allow_partial_message": False, "pack_as_bytes": True
    }  # fmt: skip
    routes = {r["name"]: r for r in vhosts(config)[0]["routes"] if r["name"] != "undeclared"}
    settings = {name: per_route(r) for name, r in routes.items()}
    assert settings["create"]["check_settings"] == {
        "with_request_body": {
            "max_request_bytes": 4096, "allow_partial_message": False, "pack_as_bytes": True
        }
    }  # fmt: skip
    assert settings["big"]["check_settings"]["with_request_body"]["max_request_bytes"] == 100_000
    # ... and every other route, the catch-alls included, turns buffering off.
    for name in ("upload", "search", "files"):
        assert settings[name]["check_settings"] == {"disable_request_body_buffering": True}, name
    assert settings["health"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "disabled": True,
    }
    catch_alls = [r for r in vhosts(config)[0]["routes"] if r["name"] == "undeclared"]
    assert len(catch_alls) == 2  # the {rest=**} guard and the last route
    for route in catch_alls:
        assert per_route(route)["check_settings"] == {"disable_request_body_buffering": True}
    # a public route with a contract is checked (anonymously), identity headers removed by authz
    assert "request_headers_to_remove" not in routes["search"]
    assert "request_headers_to_remove" in routes["health"]


def test_no_contract_no_buffering_anywhere() -> None:
    config = build_bootstrap(policy(*ROUTES[1:5]), EnvoyOptions())
    assert "with_request_body" not in ext_authz(config)
    for route in vhosts(config)[0]["routes"]:
        assert "check_settings" not in (per_route(route) or {}), route["name"]


def test_envoy_accepts_it(tmp_path: Path) -> None:
    out = tmp_path / "body.yaml"
    out.write_text(render_yaml(build_bootstrap(policy(*ROUTES), EnvoyOptions())))
    envoy_validate(out)


def test_example_policy_sends_the_body_to_its_validated_routes() -> None:
    config = build_bootstrap(load_policy(REPO / "examples/policy.yaml"), EnvoyOptions())
    reading = {
        r["name"]
        for r in vhosts(config)[0]["routes"]
        if "with_request_body" in ((per_route(r) or {}).get("check_settings") or {})
    }
    assert reading == {"create-order", "create-return"}
