"""End to end: request hygiene through a real Envoy, on both transports.

The upstream echo shows which headers arrived: client-sent identity headers (the
default list, prefixes included) never do; a method override is refused (400
method_override); an ambiguous Host is refused (by Envoy or by authz, 400); an encoded
body on a route whose contract validates bodies is refused (415).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.demo.stack import LocalStack
from authz.demo.stack import http as send

pytestmark = pytest.mark.e2e

POLICY = """\
mode: enforce
undeclared_routes: deny
routes:
  - name: echo
    path: /v1/echo
    methods: [GET, POST]
    public: true
    rate_limits: [{name: open, key: [client_address], rate: 1000/s}]
  - name: orders
    path: /v1/orders
    methods: [POST]
    public: true
    contract:
      content_types: [application/json]
      max_body_bytes: 4096
      body: {type: object}
"""


@pytest.fixture(scope="module", params=["grpc", "http"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    tmp: Path = tmp_path_factory.mktemp(f"e2e-hygiene-{request.param}")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    with LocalStack(policy=policy, state_dir=tmp / "state", transport=request.param) as running:
        yield running


def raw(stack: LocalStack, head: str) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request as written (duplicate headers and all)."""
    with socket.create_connection(("127.0.0.1", stack.listen_port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head_part, _, rest = data.partition(b"\r\n\r\n")
        status = int(head_part.split(b" ", 2)[1])
        length = 0
        for line in head_part.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, rest


def test_client_identity_headers_never_reach_the_upstream(stack: LocalStack) -> None:
    forged = {
        "x-user-id": "1",
        "x-user": "root",
        "x-remote-user": "root",
        "x-forwarded-user": "root",
        "x-auth-role": "admin",
        "x-authenticated-userid": "7",
        "x-authz-subject": "forged",
        "x-unrelated": "kept",
    }
    status, _, body = send("GET", stack.base_url + "/v1/echo", forged)
    assert status == 200, body
    arrived = json.loads(body)["headers"]
    for name in forged:
        if name != "x-unrelated":
            assert name not in arrived, name
    assert arrived["x-unrelated"] == "kept"


@pytest.mark.parametrize("name", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_method_override_header_is_refused(stack: LocalStack, name: str) -> None:
    status, _, body = send("POST", stack.base_url + "/v1/echo", {name: "DELETE"}, b"")
    assert status == 400, body
    assert json.loads(body)["error"] == "method_override"


def test_method_query_parameter_is_refused(stack: LocalStack) -> None:
    status, _, body = send("POST", stack.base_url + "/v1/echo?_method=DELETE", None, b"")
    assert status == 400, body
    assert json.loads(body)["error"] == "method_override"


def test_host_with_userinfo_is_refused(stack: LocalStack) -> None:
    status, body = raw(stack, "GET /v1/echo HTTP/1.1\r\nHost: user@api.example.com\r\n\r\n")
    assert status == 400, body
    assert json.loads(body)["error"] == "host_ambiguous"


def test_two_hosts_are_refused(stack: LocalStack) -> None:
    status, body = raw(stack, "GET /v1/echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
    assert status == 400, body  # Envoy's own codec or authz (host_ambiguous)
    merged = "GET /v1/echo HTTP/1.1\r\nHost: a.example,b.example\r\n\r\n"
    status, body = raw(stack, merged)
    assert status == 400, body
    assert json.loads(body)["error"] == "host_ambiguous"


def test_empty_host_is_refused(stack: LocalStack) -> None:
    status, body = raw(stack, "GET /v1/echo HTTP/1.1\r\nHost: \r\n\r\n")
    assert status == 400, body


def test_encoded_body_on_a_validated_route_is_415(stack: LocalStack) -> None:
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    status, _, body = send("POST", stack.base_url + "/v1/orders", headers, b"{}")
    assert status == 415, body
    assert json.loads(body)["error"] == "content_encoding_unsupported"
    headers["content-encoding"] = "identity"
    status, _, body = send("POST", stack.base_url + "/v1/orders", headers, b"{}")
    assert status == 200, body
