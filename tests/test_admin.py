"""The inventory (authz.v1.Admin on the control plane) and ``authz inventory`` against a
running service.

Replays a mix of declared and undeclared traffic through the service's gRPC Check, the
way Envoy would send it, then reads the inventory back with the CLI from the control
plane (tests/control covers its authentication, logging and ``--workers`` merging).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import yaml
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.control.render import _openapi_path
from authz.control.servicer import ADMIN_SERVICE
from authz.transport.envoy_grpc import build_check_request
from tests.support import ServiceProcess

REPO = Path(__file__).resolve().parent.parent
GENERATED = ("admin_pb2.py", "admin_pb2.pyi", "admin_pb2_grpc.py")

POLICY = """\
mode: enforce
undeclared_routes: deny
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
  - name: get-order
    path: "/v1/orders/{id}"
    methods: [GET]
    public: true
    contract:
      parameters: [{name: id, in: path, schema: {type: integer}}]
  - name: beta
    path: /v1/beta
    methods: [POST]
    public: true
    mode: monitor
    contract:
      body: {type: object, properties: {a: {type: integer}}}
"""

# (method, path, source address, body) — what the replay sends, in order
TRAFFIC = [
    *[("GET", "/healthz", f"10.0.0.{i % 3}", b"") for i in range(6)],
    *[("GET", f"/v1/orders/{i}", "10.0.1.1", b"") for i in range(4)],
    ("GET", "/v1/orders/abc", "10.0.1.2", b""),
    *[("GET", f"/v1/users/{i}?expand=profile", f"10.0.2.{i}", b"") for i in range(5)],
    (
        "GET",
        "/v1/users/0b7e3c1a-8f7d-4c0e-9a5b-1d2e3f4a5b6c/keys/deadbeefdeadbeef",
        "10.0.2.9",
        b"",
    ),
    ("DELETE", "/v1/orders/9", "10.0.3.1", b""),
    ("GET", "/internal/debug", "10.0.3.1", b""),
    ("POST", "/v1/beta?trace=1", "10.0.4.1", b'{"a": 1, "b": {"c": 2}}'),
]


def normalise(text: str) -> str:
    """Generated code without the generator's version numbers."""
    return re.sub(r"\d+\.\d+\.\d+", "X.Y.Z", text)


def test_generated_modules_are_current(tmp_path: Path) -> None:
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", "protos", "--python_out=.",
         "--pyi_out=.", "--grpc_python_out=.", "protos/authz/v1/admin.proto"],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    for name in GENERATED:
        fresh = (tmp_path / "authz" / "v1" / name).read_text()
        committed = (REPO / "authz" / "v1" / name).read_text()
        # Same grpcio-tools: byte for byte. Another version: the same but for the
        # version numbers it stamps in (run scripts/gen-protos to refresh them).
        assert normalise(fresh) == normalise(committed), (
            f"authz/v1/{name} is stale: run scripts/gen-protos"
        )
    script = (REPO / "scripts" / "gen-protos").read_text()
    assert "protos/authz/v1/admin.proto" in script


def test_openapi_path_names_repeated_ids() -> None:
    assert _openapi_path("/v1/users/{id}/keys/{id}") == ("/v1/users/{id}/keys/{id2}", ["id", "id2"])


def replay(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for method, path, source, body in TRAFFIC:
            headers = {"content-type": "application/json"} if body else {}
            request = build_check_request(
                method=method, path=path, host="api.local", headers=headers, body=body,
                source_address=source,
            )  # fmt: skip
            stub.Check(request, timeout=5)


def test_inventory_of_replayed_traffic(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    svc = start_service(policy)
    replay(svc.address)

    # reflection on the ext_authz port lists ext_authz, not the control plane
    listed = subprocess.run(
        [sys.executable, "-c", LIST_SERVICES, svc.address], capture_output=True, text=True,
        check=True,
    ).stdout.split()  # fmt: skip
    assert ADMIN_SERVICE == "authz.v1.Admin"
    assert "envoy.service.auth.v3.Authorization" in listed
    assert ADMIN_SERVICE not in listed

    # the token the service wrote to its runtime dir (svc.env): found by default
    authz = [sys.executable, "-m", "authz", "inventory", "--control", svc.control]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*authz, *argv], capture_output=True, text=True, env=svc.env)

    result = run("--json")
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    rows = {(e["declared"], e["method"], e["path"]): e for e in inventory["endpoints"]}
    assert set(rows) == {
        (True, "GET", "/healthz"),
        (True, "GET", "/v1/orders/{id}"),
        (True, "POST", "/v1/beta"),
        (False, "GET", "/v1/users/{id}"),
        (False, "GET", "/v1/users/{id}/keys/{id}"),
        (False, "DELETE", "/v1/orders/{id}"),
        (False, "GET", "/internal/debug"),
    }
    health = rows[(True, "GET", "/healthz")]
    assert (health["route"], health["count"], health["distinct_callers"]) == ("health", "6", "3")
    orders = rows[(True, "GET", "/v1/orders/{id}")]
    assert orders["count"] == "5"
    assert orders["outcomes"] == {"allowed": "4", "parameter_invalid": "1"}
    users = rows[(False, "GET", "/v1/users/{id}")]
    assert (users["count"], users["distinct_callers"]) == ("5", "5")
    assert users["query_parameters"] == ["expand"]
    assert users["outcomes"] == {"undeclared_route": "5"}
    beta = rows[(True, "POST", "/v1/beta")]
    assert beta["drift_query_parameters"] == ["trace"]
    assert beta["drift_body_fields"] == ["/b"]
    assert rows[(False, "DELETE", "/v1/orders/{id}")]["outcomes"] == {"method_not_allowed": "1"}
    assert inventory["policy_version"].startswith("sha256:")
    assert "callers_sketch" not in users

    # the table, and an OpenAPI skeleton of what was observed
    skeleton = tmp_path / "observed.yaml"
    result = run("--openapi", str(skeleton))
    assert result.returncode == 0, result.stderr
    (tmp_path / "inventory.txt").write_text(result.stdout)
    lines = result.stdout.splitlines()
    assert any(re.match(r"UNDECLARED\s+GET\s+/v1/users/\{id\}\s+-\s+5\s+5\s", x) for x in lines)
    assert any(re.match(r"declared\s+GET\s+/healthz\s+health\s+6\s+3\s", x) for x in lines)
    assert "POST /v1/beta: drift, body fields: /b" in result.stdout
    doc = yaml.safe_load(skeleton.read_text())
    assert doc["openapi"] == "3.1.0"
    op = doc["paths"]["/v1/users/{id}/keys/{id2}"]["get"]
    assert [p["name"] for p in op["parameters"]] == ["id", "id2"]
    assert op["x-authz-observed"]["declared"] is False
    assert doc["paths"]["/v1/users/{id}"]["get"]["parameters"][1] == {
        "name": "expand", "in": "query", "schema": {"type": "string"}
    }  # fmt: skip
    assert doc["paths"]["/v1/orders/{id}"]["get"]["operationId"] == "get-order"
    assert doc["paths"]["/v1/beta"]["post"]["x-authz-drift-body-fields"] == ["/b"]

    result = run("--undeclared", "--json")
    assert all(not e["declared"] for e in json.loads(result.stdout)["endpoints"])


def test_inventory_of_a_service_that_is_not_there() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "authz", "inventory", "--control", "127.0.0.1:1", "--timeout", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 3
    assert "UNAVAILABLE" in result.stderr and "Traceback" not in result.stderr


LIST_SERVICES = """\
import sys, grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
        for service in reply.list_services_response.service:
            print(service.name)
"""
