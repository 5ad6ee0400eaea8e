"""Envoy and authz pick the same route, for every example and test policy.

Both route tables derive from one compiled plan (:mod:`authz.routeplan`); this is the
proof against a real Envoy rather than against a model of it. For each policy in
:mod:`tests.policies`, the config ``authz envoy-config`` generates is loaded into one
Envoy process (each policy's listener on its own port), and a generated set of
requests goes through it: every route's template instantiated, and near misses (a
trailing slash added or removed, an extra segment, the parent path, an empty
``{rest=**}``, every method the policy names plus one it does not, the hosts it
names in other spellings and with a port, subdomains of its wildcards, the bare
domain, and a host it does not name).

Which route Envoy took is read from its access log (``route``: the route's name,
``undeclared`` for the catch-all), which the generated config writes anyway: nothing
is added to the config for this test. Each request carries its number in its
User-Agent, which the log records. authz's pick is :class:`authz.routing.Router` on
the canonical path, with ``undeclared`` for a 404 or 405.

Any difference fails the test. (``{rest=**}`` with a trailing ``/``, which Envoy's
``**`` matches, was one until the service's template matched it too.)
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from authz.envoyconf import EnvoyOptions, HostPort, build_bootstrap, render_yaml
from authz.errors import MethodNotAllowed, UndeclaredRoute
from authz.paths import canonicalize
from authz.pathtemplate import LITERAL, PARAM, parse_template
from authz.policy.config import PolicyConfig
from authz.routing import Router
from tests.policies import NamedPolicy, all_policies
from tests.test_envoy_config import envoy_binary

pytestmark = pytest.mark.e2e

UNDECLARED = "undeclared"
#: Methods every path is tried with, besides those the policy names.
BASE_METHODS = ("GET", "POST", "DELETE")
#: Methods Envoy or http.client treat specially; a policy naming them is probed without.
SKIPPED_METHODS = frozenset({"*", "CONNECT", "TRACE", "HEAD"})
OTHER_HOST = "other.invalid"


@dataclass(frozen=True)
class Probe:
    policy: int  # index into the policy list
    host: str
    method: str
    path: str


def _instantiate(template: str) -> list[str]:
    """A path each template matches, and the near misses around it."""
    tpl = parse_template(template)
    parts = [text if kind == LITERAL else "x1" if kind == PARAM else "a/b"
             for kind, text in tpl.segments]  # fmt: skip
    trailing = template.endswith("/") and template != "/"
    path = "/" + "/".join(parts) + ("/" if trailing else "")
    if template == "/":
        return ["/", "/x1"]
    out = [path, path.rstrip("/") if trailing else path + "/", path.rstrip("/") + "/extra"]
    parent = "/" + "/".join(parts[:-1])
    out += [parent, parent.rstrip("/") + "/"]  # for {rest=**}: the empty rest
    return out


def _hosts(policy: PolicyConfig) -> list[str]:
    hosts = ["localhost", OTHER_HOST]
    for name in sorted({h for r in policy.routes for h in r.hosts}):
        if name.startswith("*."):
            domain = name[2:]
            hosts += [f"a.{domain}", f"A.B.{domain.upper()}:8443", domain]
        else:
            hosts += [name, f"{name.upper()}:8080", f"x.{name}"]
    return list(dict.fromkeys(hosts))


def _methods(policy: PolicyConfig) -> list[str]:
    named = {m for r in policy.routes for m in r.methods}
    return sorted((named | set(BASE_METHODS)) - SKIPPED_METHODS)


def _probes(index: int, policy: PolicyConfig) -> list[Probe]:
    paths = dict.fromkeys(p for r in policy.routes for p in _instantiate(r.path))
    return [
        Probe(index, host, method, path)
        for host, method, path in itertools.product(_hosts(policy), _methods(policy), paths)
    ]


def authz_pick(router: Router, probe: Probe) -> str:
    path, _ = canonicalize(probe.path)
    try:
        return router.match(probe.host, probe.method, path).name
    except (UndeclaredRoute, MethodNotAllowed):
        return UNDECLARED


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _one_bootstrap(policies: list[NamedPolicy], upstream_port: int) -> dict[str, Any]:
    """One Envoy config holding every policy's listener (port 0: Envoy picks)."""
    options = EnvoyOptions(
        listen=HostPort("127.0.0.1", 0),
        upstream=HostPort("127.0.0.1", upstream_port),
        authz=HostPort("127.0.0.1", 9),  # nothing listens: protected routes deny
        admin=HostPort("127.0.0.1", 0),
    )
    merged: dict[str, Any] | None = None
    for index, named in enumerate(policies):
        config = build_bootstrap(named.policy, options)
        (listener,) = config["static_resources"]["listeners"]
        listener["name"] = f"policy-{index}"
        if merged is None:
            merged = config
            merged["static_resources"]["listeners"] = []
        # the clusters depend on the options only, so every policy's are the same
        assert config["static_resources"]["clusters"] == merged["static_resources"]["clusters"]
        merged["static_resources"]["listeners"].append(listener)
    assert merged is not None
    return merged


@contextlib.contextmanager
def _envoy(config: dict[str, Any], tmp_path: Path) -> Iterator[tuple[dict[str, int], Path]]:
    """Envoy running ``config``: (listener name -> port, the file its stdout goes to)."""
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(render_yaml(config))
    admin_file = tmp_path / "admin.address"
    log_path = tmp_path / "envoy.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(cfg), "--use-dynamic-base-id", "--concurrency", "1",
         "--log-level", "warn", "--disable-hot-restart",
         "--admin-address-path", str(admin_file)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        ports: dict[str, int] = {}
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            with contextlib.suppress(OSError, ValueError, KeyError):
                host, port = admin_file.read_text().strip().rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=2)
                conn.request("GET", "/ready")
                if conn.getresponse().read() and True:
                    conn.request("GET", "/listeners?format=json")
                    statuses = json.loads(conn.getresponse().read())["listener_statuses"]
                    ports = {
                        s["name"]: s["local_address"]["socket_address"]["port_value"]
                        for s in statuses
                    }
                    if len(ports) == len(config["static_resources"]["listeners"]) and all(
                        ports.values()
                    ):
                        break
            assert time.monotonic() < deadline, "envoy did not become ready"
            time.sleep(0.2)
        yield ports, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _send(port: int, probes: list[tuple[int, Probe]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for number, probe in probes:
            for attempt in (1, 2):
                try:
                    conn.request(
                        probe.method,
                        probe.path,
                        headers={"host": probe.host, "user-agent": f"probe-{number}"},
                    )
                    resp = conn.getresponse()
                    resp.read()
                    if resp.getheader("connection", "").lower() == "close":
                        conn.close()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    if attempt == 2:
                        raise
    finally:
        conn.close()


def test_policies_are_collected() -> None:
    ids = [p.id for p in all_policies()]
    # examples, the policies built in code, and policies written by the e2e,
    # integration and unit tests: a collector that finds nothing fails here
    assert "examples/compose/policy.yaml" in ids
    assert "tests/policies.py:CORNERS" in ids
    assert "tests/test_envoy_config.py:HOSTED" in ids
    assert any(i.startswith("tests/e2e/test_through_envoy.py") for i in ids)
    assert sum(i.startswith("tests/integration/") for i in ids) >= 5
    assert len(ids) >= 30


def test_envoy_and_authz_pick_the_same_route_for_every_policy(tmp_path: Path) -> None:
    policies = list(all_policies())
    probes = [p for i, named in enumerate(policies) for p in _probes(i, named.policy)]
    numbered = list(enumerate(probes))
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        config = _one_bootstrap(policies, upstream.server_address[1])
        with _envoy(config, tmp_path) as (ports, log_path):
            for index in range(len(policies)):
                mine = [(n, p) for n, p in numbered if p.policy == index]
                _send(ports[f"policy-{index}"], mine)
    finally:
        upstream.shutdown()
        upstream.server_close()

    envoy_picks: dict[int, str] = {}
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            agent = entry.get("user_agent") or ""
            if agent.startswith("probe-"):
                envoy_picks[int(agent[len("probe-") :])] = entry["route"]
    routers = [Router(named.policy.routes) for named in policies]
    mismatches = []
    picked: dict[int, set[str]] = {}
    for number, probe in numbered:
        expected = authz_pick(routers[probe.policy], probe)
        picked.setdefault(probe.policy, set()).add(expected)
        got = envoy_picks.get(number, "(not in Envoy's access log)")
        if got != expected:
            mismatches.append(
                f"{policies[probe.policy].id}: {probe.method} {probe.host} {probe.path}: "
                f"envoy {got!r}, authz {expected!r}"
            )
    assert not mismatches, f"{len(mismatches)} of {len(probes)} differ:\n" + "\n".join(
        mismatches[:40]
    )
    # every declared route was reached by some probe, so each was actually compared
    for index, named in enumerate(policies):
        unreached = {r.name for r in named.policy.routes} - picked.get(index, set())
        assert not unreached, f"{named.id}: no probe reached {sorted(unreached)}"
    assert len(envoy_picks) == len(probes)
