"""render_yaml: strings stay strings for Envoy's YAML reader, which is YAML 1.1."""

from __future__ import annotations

from pathlib import Path

import yaml

from authz.envoyconf import EnvoyOptions, build_bootstrap, render_yaml
from authz.policy.config import PolicyConfig, RouteConfig
from tests.test_envoy_config import envoy_validate


def test_route_named_like_a_yaml_11_boolean_loads_in_envoy(tmp_path: Path) -> None:
    # found by tests/e2e/test_route_plan_through_envoy.py: a route named "y" (a test
    # policy has one) was written unquoted, and Envoy read it as true and refused it
    names = ("y", "N", "yes", "off", "x")
    policy = PolicyConfig(
        version="sha256:test",
        source="test.yaml",
        routes=tuple(RouteConfig(name=n, path=f"/{n}", methods=("GET",)) for n in names),
    )
    text = render_yaml(build_bootstrap(policy, EnvoyOptions()))
    assert "- name: 'y'" in text and "- name: 'N'" in text
    assert yaml.safe_load(text) == build_bootstrap(policy, EnvoyOptions())
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    envoy_validate(path)
