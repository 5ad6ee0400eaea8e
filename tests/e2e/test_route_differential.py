"""Differential fuzzing through a real Envoy: Envoy and the service agree on the route.

Paths are generated from the route templates of a test policy, then mutated (dot
segments, double slashes, percent-encodings, case, trailing slashes, encoded
slashes, parameters, queries). Each goes through Envoy (configured by
``authz envoy-config``'s builder) to the echo upstream, in monitor mode so that
every request Envoy accepts reaches it. Per request (joined by Envoy's
x-request-id):

- Envoy's route: ``route`` in its access log (``undeclared`` for the catch-all);
- the service's route: ``route`` in its decision record ("" when undeclared or
  the method is not allowed), or, on a public route Envoy does not send to the
  service, the service's own router on the path the upstream saw;
- the path the upstream saw: the path the decision was made on, and (when the
  service's canonicaliser accepts the raw path) what it makes of the raw path.

A request Envoy answers itself (400 for an escaped slash, for instance) never
reaches the service, so there is nothing to compare.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authz.demo.stack import LocalStack
from authz.envoyconf.common import CATCH_ALL_ROUTE
from authz.errors import AuthzError, InvalidPath
from authz.paths import canonicalize
from authz.policy.loader import load_policy
from authz.routing import Router

pytestmark = pytest.mark.e2e

POLICY = """\
mode: monitor
undeclared_routes: deny
realm: diff
providers:
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {id: k, sha256: "0000000000000000000000000000000000000000000000000000000000000000", owner: t, scopes: [a], expires: "2999-01-01"}
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
  - {name: ping, path: /v1/ping, methods: [GET], public: true}
  - {name: docs, path: "/docs/{rest=**}", methods: [GET], public: true}
  - {name: list-orders, path: /v1/orders, methods: [GET], providers: [keys]}
  - {name: create-order, path: /v1/orders, methods: [POST], providers: [keys]}
  - {name: export, path: /v1/orders/export, methods: [GET], providers: [keys]}
  - {name: get-order, path: "/v1/orders/{id}", methods: [GET, DELETE], providers: [keys]}
  - {name: order-item, path: "/v1/orders/{id}/items/{item}", methods: [GET], providers: [keys]}
  - {name: files, path: "/v1/files/{rest=**}", methods: [GET], providers: [keys]}
  - {name: admin, path: /admin, methods: [GET], hosts: [admin.diff.example], providers: [keys]}
"""

TEMPLATES = [
    "/healthz",
    "/v1/ping",
    "/docs/{rest}",
    "/v1/orders",
    "/v1/orders/export",
    "/v1/orders/{id}",
    "/v1/orders/{id}/items/{id}",
    "/v1/files/{rest}",
    "/admin",
    "/v1",
    "/",
    "/docs",
    "/v1/files",
]
SEGMENTS = ["42", "abc", "a-b", "x.y", "~u", "%41", "%7e", "%C3%A9", "..", ".", "", "export", "a b"]
UNRESERVED = "abcdefghijklmnopqrstuvwxyz0123456789-._~"
#: The number of generated requests per transport (AUTHZ_DIFF_REQUESTS for longer runs).
REQUESTS = int(os.environ.get("AUTHZ_DIFF_REQUESTS", "300"))


def _concrete(template: str, rng: random.Random) -> str:
    path = template
    while "{id}" in path:
        path = path.replace("{id}", rng.choice(SEGMENTS).replace(" ", "%20"), 1)
    if "{rest}" in path:
        rest = "/".join(rng.choice(SEGMENTS[:8]) for _ in range(rng.randint(0, 3)))
        path = path.replace("{rest}", rest)
    return path


def _mutate(path: str, rng: random.Random) -> str:
    for _ in range(rng.randint(0, 3)):
        slashes = [i for i, ch in enumerate(path) if ch == "/"] or [0]
        at = rng.choice(slashes)
        op = rng.randrange(12)
        if op == 0:  # a dot segment
            path = path[:at] + rng.choice(["/.", "/./.", "/x/..", "/..", "/a/b/../.."]) + path[at:]
        elif op == 1:  # a double slash
            path = path[:at] + "/" + path[at:]
        elif op == 2:  # an unreserved character percent-encoded (either hex case)
            spots = [i for i, ch in enumerate(path) if ch in UNRESERVED]
            if spots:
                i = rng.choice(spots)
                esc = f"%{ord(path[i]):02X}"
                path = path[:i] + (esc if rng.random() < 0.5 else esc.lower()) + path[i + 1 :]
        elif op == 3:  # an encoded dot segment
            path = path[:at] + rng.choice(["/%2e", "/%2E%2e", "/.%2E", "/x/%2e%2e"]) + path[at:]
        elif op == 4:  # case
            path = path.upper() if rng.random() < 0.3 else path.capitalize()
        elif op == 5:  # a trailing slash, dot or dot-dot
            path += rng.choice(["/", "/.", "/..", "//"])
        elif op == 6:  # an encoded slash or backslash
            path = path[:at] + rng.choice(["%2F", "%2f", "%5C"]) + path[at + 1 :]
        elif op == 7:  # a path parameter
            path += rng.choice([";x=1", ";", ";/.."])
        elif op == 8:  # a query
            path += rng.choice(["?q=1", "?a=/../admin", "?%2e%2e", "?"])
        elif op == 9:  # a reserved character encoded
            path = (
                path[: at + 1]
                + rng.choice(["%3B", "%3F", "%23", "%25", "%3A", "%40"])
                + path[at + 1 :]
            )
        elif op == 10:  # an empty segment at the start
            path = "/" + path
        else:  # a segment pasted from another template
            path = path.rstrip("/") + "/" + rng.choice(["export", "items", "42", ".."])
    return path


@dataclass
class Sent:
    method: str
    raw: str
    host: str
    status: int
    upstream: dict[str, object] | None  # the echo's JSON, None when Envoy answered


@dataclass
class Stack:
    stack: LocalStack
    router: Router


@pytest.fixture(scope="module", params=["grpc", "http"])
def diff_stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"diff-{request.param}")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    stack = LocalStack(policy=policy, state_dir=tmp / "state", transport=request.param)
    try:
        stack.start()
        yield Stack(stack, Router(load_policy(policy).routes))
    finally:
        stack.stop()


def _send(port: int, method: str, raw: str, host: str) -> Sent:
    """One raw request (the path exactly as generated: no client-side normalising)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, raw, skip_host=True, skip_accept_encoding=True)
        conn.putheader("host", host)
        conn.endheaders()
        reply = conn.getresponse()
        body = reply.read()
        echoed = None
        if reply.status == 200 and reply.getheader("content-type") == "application/json":
            echoed = json.loads(body)
        return Sent(method, raw, host, reply.status, echoed)
    finally:
        conn.close()


def _json_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):  # a line Envoy is still writing
                out.append(json.loads(line))
    return out


def _canonical_or_none(path: str) -> str | None:
    try:
        return canonicalize(path)[0]
    except InvalidPath:
        return None


def _service_route(router: Router, host: str, method: str, path: str) -> str:
    try:
        return router.match(host, method, canonicalize(path)[0]).name
    except AuthzError:
        return ""


def test_envoy_and_service_agree_on_the_route(diff_stack: Stack) -> None:
    seed = int(os.environ.get("AUTHZ_DIFF_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    stack = diff_stack.stack
    sent: list[Sent] = []
    for _ in range(REQUESTS):
        raw = _mutate(_concrete(rng.choice(TEMPLATES), rng), rng)
        method = rng.choice(["GET", "GET", "GET", "POST", "DELETE"])
        host = rng.choice(["shop.example", "admin.diff.example", "ADMIN.diff.example:8080"])
        sent.append(_send(stack.listen_port, method, raw, host))

    reached = [s for s in sent if s.upstream is not None]
    ids = {str(s.upstream["headers"]["x-request-id"]) for s in reached}  # type: ignore[index]
    envoy_log = stack.state_dir / "envoy.log"
    deadline = time.monotonic() + 20
    while True:  # Envoy flushes its access log about once a second
        access = {str(r.get("request_id")): r for r in _json_lines(envoy_log)}
        if ids <= access.keys() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    decisions = {str(r.get("request_id")): r for r in _json_lines(stack.decision_log)}

    problems: list[str] = []
    routes_seen: set[str] = set()
    for s in reached:
        assert s.upstream is not None
        rid = str(s.upstream["headers"]["x-request-id"])  # type: ignore[index]
        seen_path = str(s.upstream["path"]).partition("?")[0]
        envoy_route = str(access[rid]["route"]) if rid in access else "?"
        record = decisions.get(rid)
        what = f"{s.method} {s.raw!r} host={s.host} -> upstream {seen_path!r}"
        if record is None:
            # Envoy did not ask the service: only a public route may do that.
            service_route = _service_route(diff_stack.router, s.host, s.method, seen_path)
            if envoy_route not in ("health", "ping", "docs"):
                problems.append(f"{what}: no decision on Envoy route {envoy_route!r}")
            elif _canonical_or_none(seen_path) is None:
                # Envoy repaired a malformed escape ('%A%39' -> '%25A9') into a path the
                # service refuses (invalid UTF-8). Asked, the service would deny it
                # (400), never route it elsewhere; a public route does not ask.
                pass
            elif service_route != envoy_route:
                problems.append(
                    f"{what}: Envoy {envoy_route!r} (public), service {service_route!r}"
                )
        else:
            service_route = str(record["route"])
            expected = service_route or CATCH_ALL_ROUTE
            if envoy_route != expected:
                problems.append(f"{what}: Envoy {envoy_route!r}, service {service_route!r}")
            # the decision was made on the path the upstream saw (in canonical form:
            # Envoy keeps the hex case of escapes, the service upper-cases it)
            decided = record.get("path")
            if decided is not None and decided != _canonical_or_none(seen_path):
                problems.append(f"{what}: decided on {decided!r}")
        routes_seen.add(envoy_route)
        try:
            canonical = canonicalize(s.raw)[0]
        except InvalidPath:
            continue  # refused by the service if it came direct; Envoy may repair it
        if canonical != _canonical_or_none(seen_path):
            problems.append(f"{what}: canonicalize(raw) is {canonical!r}")
    summary = (
        f"seed {seed}: {len(sent)} sent, {len(reached)} reached the upstream, "
        f"{len(sent) - len(reached)} answered by Envoy; routes {sorted(routes_seen)}"
    )
    print(summary)
    assert not problems, summary + "\n" + "\n".join(problems[:40])
    assert len(reached) > REQUESTS // 3, summary
    assert {"get-order", "files", CATCH_ALL_ROUTE} <= routes_seen, summary
