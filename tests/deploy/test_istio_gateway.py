"""The Istio and Envoy Gateway wiring asks for what `authz envoy-config` asks of a
plain Envoy: timeout, fail closed, headers to send and return, body settings, path
normalisation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.errors import InvalidPath
from authz.paths import canonicalize
from tests.deploy.manifests import container, flag, mesh_config, one, policy_text, render

AUTHZ = str(Path(sys.executable).parent / "authz")
FILTER = "envoy.filters.http.ext_authz"


def envoy_config(tmp_path: Path, transport: str) -> dict[str, Any]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(render("base")))
    secret = tmp_path / "secret"
    secret.write_text("s" * 40 + "\n")
    extra = ["--http-secret-file", str(secret)] if transport == "http" else []
    out = subprocess.run(
        [AUTHZ, "envoy-config", str(policy), "--transport", transport, *extra],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(yaml.safe_load(out))


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    return dict(listener["filter_chains"][0]["filters"][0]["typed_config"])


def ext_authz(config: dict[str, Any]) -> dict[str, Any]:
    (found,) = [f for f in hcm(config)["http_filters"] if f["name"] == FILTER]
    return dict(found["typed_config"])


def patterns(matcher: dict[str, Any]) -> list[str]:
    """Envoy string matchers as Istio writes them: exact, or prefix with '*'."""
    return [p["exact"] if "exact" in p else p["prefix"] + "*" for p in matcher["patterns"]]


def providers() -> dict[str, dict[str, Any]]:
    found = mesh_config()["spec"]["meshConfig"]["extensionProviders"]
    return {p["name"]: p for p in found}


def seconds(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


@pytest.mark.parametrize(("name", "kind", "port"), [("authz", "envoyExtAuthzGrpc", "grpc"),
                                                    ("authz-http", "envoyExtAuthzHttp", "http")])  # fmt: skip
def test_istio_providers_match_the_generated_filter(
    name: str, kind: str, port: str, tmp_path: Path
) -> None:
    filt = ext_authz(envoy_config(tmp_path, "grpc" if port == "grpc" else "http"))
    provider = providers()[name][kind]
    service = one(render("base"), "Service", "authz")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert provider["service"] == "authz.authz-system.svc.cluster.local"
    assert provider["port"] == ports[port]
    assert provider["failOpen"] is filt["failure_mode_allow"] is False
    assert int(provider["statusOnError"]) == 403 and filt["status_on_error"]["code"] == "Forbidden"
    upstream = filt["grpc_service"] if port == "grpc" else filt["http_service"]["server_uri"]
    assert seconds(provider["timeout"]) == seconds(upstream["timeout"])
    body = filt["with_request_body"]
    assert provider["includeRequestBodyInCheck"] == {
        "maxRequestBytes": body["max_request_bytes"],
        "allowPartialMessage": body["allow_partial_message"],
        "packAsBytes": body["pack_as_bytes"],
    }
    if port == "http":
        service_cfg = filt["http_service"]
        assert provider["pathPrefix"] == service_cfg["path_prefix"]
        assert provider["includeRequestHeadersInCheck"] == patterns(filt["allowed_headers"])
        response = service_cfg["authorization_response"]
        assert provider["headersToUpstreamOnAllow"] == patterns(
            response["allowed_upstream_headers"]
        )
        assert provider["headersToDownstreamOnDeny"] == patterns(response["allowed_client_headers"])
        assert provider["headersToDownstreamOnAllow"] == patterns(
            response["allowed_client_headers_on_success"]
        )
        (secret,) = provider["includeAdditionalHeadersInCheck"]
        headers = service_cfg["authorization_request"]["headers_to_add"]
        assert secret in {h["key"] for h in headers}


def test_the_http_port_takes_the_secret_the_provider_sends() -> None:
    args = container(render("base"))["args"]
    assert flag(args, "--http-secret-file").endswith("/http-secret")


def test_mesh_path_normalization_is_the_one_authz_canonicalises_to(tmp_path: Path) -> None:
    mesh = mesh_config()["spec"]["meshConfig"]
    assert mesh["pathNormalization"] == {"normalization": "MERGE_SLASHES"}
    # MERGE_SLASHES is Envoy's normalize_path + merge_slashes: what our config sets
    manager = hcm(envoy_config(tmp_path, "grpc"))
    assert manager["normalize_path"] is True and manager["merge_slashes"] is True
    # ... and what authz computes: dot segments removed, then slashes merged
    assert canonicalize("/v1/x/../orders")[0] == "/v1/orders"
    assert canonicalize("/v1//orders")[0] == "/v1/orders"
    assert canonicalize("/a//../b")[0] == "/a/b"  # Envoy's order: dots first, then merge
    # escaped slashes, which MERGE_SLASHES leaves as they are, authz refuses
    for path in ("/v1%2Forders", "/v1%5corders"):
        with pytest.raises(InvalidPath):
            canonicalize(path)


def test_each_workload_gets_a_custom_authorization_policy() -> None:
    policy = one(render("overlays/istio"), "AuthorizationPolicy")
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] in providers()
    assert policy["spec"]["selector"]["matchLabels"]  # per workload, not mesh-wide
    namespace = one(render("overlays/istio"), "Namespace")
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"


def test_envoy_gateway_security_policy_matches_the_generated_filter(tmp_path: Path) -> None:
    docs = render("overlays/envoy-gateway")
    filt = ext_authz(envoy_config(tmp_path, "grpc"))
    ext = one(docs, "SecurityPolicy")["spec"]["extAuth"]
    assert ext["failOpen"] is filt["failure_mode_allow"] is False
    assert seconds(ext["timeout"]) == seconds(filt["grpc_service"]["timeout"])
    assert ext["recomputeRoute"] is filt["clear_route_cache"] is False
    assert ext["bodyToExtAuth"]["maxRequestBytes"] == filt["with_request_body"]["max_request_bytes"]
    (ref,) = ext["grpc"]["backendRefs"]
    service = one(docs, "Service", "authz")
    grpc_port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"]
    assert (ref["name"], ref["namespace"], ref["port"]) == ("authz", "authz-system", grpc_port)
    grant = one(docs, "ReferenceGrant")["spec"]
    assert grant["from"] == [
        {"group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": "shop"}
    ]
    assert grant["to"][0]["name"] == "authz"
