"""Policy reloads against `authz serve`: changes found by content, loaded only once the
files have settled, garbage refused, ConfigMap symlink swaps followed, widenings logged."""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.policy.diff import log_widenings
from authz.policy.loader import load_policy_bytes, policy_version
from authz.transport.envoy_grpc import build_check_request
from tests.support import ServiceProcess, wait_for

POLICY = """\
mode: enforce
providers:
  mesh: {type: mtls, trust_domains: [prod]}
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
  - name: internal
    path: /internal
    methods: [POST]
    providers: [mesh]
    spiffe_ids:
      - spiffe://prod/billing
      - spiffe://prod/ledger
"""
#: POLICY cut at a line boundary by a writer that stopped early: still valid, and the
#: route lost its allowlist (every SPIFFE ID of the trust domain gets in).
CUT = POLICY[: POLICY.index("    spiffe_ids:")]
BILLING, LEDGER, OTHER = "spiffe://prod/billing", "spiffe://prod/ledger", "spiffe://prod/intruder"


def status(svc: ServiceProcess, principal: str = "", path: str = "/internal") -> int:
    """200 for an allow, else the deny's HTTP status."""
    request = build_check_request(
        method="POST" if path == "/internal" else "GET",
        path=path,
        host="api.local",
        headers={},
        principal=principal,
    )
    with grpc.insecure_channel(svc.address) as channel:
        answer = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)
    if answer.HasField("ok_response"):
        return 200
    return int(answer.denied_response.status.code)


def active_versions(svc: ServiceProcess) -> list[str]:
    """The versions swapped in by reloads, in order."""
    return re.findall(r"policy (sha256:[0-9a-f]+) active", svc.log())


def version(text: str) -> str:
    return policy_version(text.encode())


def test_an_edit_that_keeps_size_and_mtime_is_reloaded(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    svc = start_service(policy)
    assert (status(svc, BILLING), status(svc, LEDGER)) == (200, 200)
    before = os.stat(policy)
    edited = POLICY.replace("ledger", "payout")  # same length
    policy.write_text(edited)
    os.utime(policy, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(policy)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    wait_for(lambda: status(svc, "spiffe://prod/payout") == 200)
    assert status(svc, LEDGER) == 403
    assert active_versions(svc) == [version(edited)]


def test_a_half_written_file_is_never_loaded(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    svc = start_service(policy, "--reload-settle", "1.5")
    complete = POLICY.replace("      - spiffe://prod/ledger\n", "      - spiffe://prod/payout\n")
    half = complete[: complete.index("    spiffe_ids:")]  # valid YAML, and wider
    with open(policy, "w") as f:  # a non-atomic writer, in place
        f.write(half)
        f.flush()
        time.sleep(0.6)  # the poller (every 0.2 s) sees the half; shorter than the settle
        f.write(complete[len(half) :])
    wait_for(lambda: status(svc, "spiffe://prod/payout") == 200)
    assert (status(svc, BILLING), status(svc, LEDGER), status(svc, OTHER)) == (200, 403, 403)
    assert "waiting for them to settle" in svc.log()
    assert active_versions(svc) == [version(complete)]
    assert version(half) not in svc.log()
    assert "loses its spiffe_ids" not in svc.log()


def test_a_file_cut_short_loads_after_the_settle_and_warns(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settle = 2.0
    svc = start_service(policy, "--reload-settle", str(settle))
    assert status(svc, OTHER) == 403
    started = time.monotonic()
    policy.write_text(CUT)  # the writer died after a line: valid, and wider
    early = status(svc, OTHER)
    if time.monotonic() - started < settle:  # asked before the settle could have passed
        assert early == 403
    wait_for(lambda: status(svc, OTHER) == 200)
    assert active_versions(svc) == [version(CUT)]
    warnings = [line for line in svc.log().splitlines() if "widens access" in line]
    assert len(warnings) == 1
    assert re.search(r" WARNING authz\.server \[\d+\] policy ", warnings[0])
    assert "route internal: loses its spiffe_ids (2 entries)" in warnings[0]


def test_a_file_cut_short_and_narrower_loads_without_a_warning(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    svc = start_service(policy, "--reload-settle", "0.3")
    narrower = POLICY[: POLICY.index("      - spiffe://prod/ledger")]  # valid: one ID left
    policy.write_text(narrower)
    wait_for(lambda: status(svc, LEDGER) == 403)
    assert (status(svc, BILLING), status(svc, OTHER)) == (200, 403)
    assert active_versions(svc) == [version(narrower)]
    assert "widens access" not in svc.log()


def test_garbage_is_refused_the_old_policy_serves_and_a_fix_recovers(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    svc = start_service(policy, "--reload-settle", "0.2")
    policy.write_bytes(b"\x00\xff\xfe garbage {{{ [\n")
    wait_for(lambda: "policy reload rejected" in svc.log())
    assert "not UTF-8" in svc.log() and "keeping policy" in svc.log()
    assert (status(svc, BILLING), status(svc, OTHER)) == (200, 403)
    time.sleep(1.0)  # five more polls: the same content is not parsed or reported again
    assert svc.log().count("policy reload rejected") == 1
    assert svc.log().count("policy file changed") == 1
    policy.write_text("routes: [\n")  # other garbage: valid UTF-8, invalid YAML
    wait_for(lambda: svc.log().count("policy reload rejected") == 2)
    assert f"{policy}:2:1: invalid YAML" in svc.log()
    assert status(svc, BILLING) == 200
    fixed = POLICY.replace("ledger", "payout")
    policy.write_text(fixed)
    wait_for(lambda: status(svc, "spiffe://prod/payout") == 200)
    assert status(svc, LEDGER) == 403
    assert active_versions(svc) == [version(fixed)]


def test_a_policy_swapped_atomically_for_another_changes_decisions(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    svc = start_service(policy)
    assert (status(svc, BILLING), status(svc, path="/v1/items")) == (200, 404)
    other = (
        POLICY.replace("      - spiffe://prod/billing\n", "")
        + "  - {name: items, path: /v1/items, methods: [GET], public: true}\n"
    )
    temp = tmp_path / ".policy.yaml.tmp"  # same directory: the rename is atomic
    temp.write_text(other)
    os.replace(temp, policy)
    wait_for(lambda: status(svc, path="/v1/items") == 200)
    assert (status(svc, BILLING), status(svc, LEDGER)) == (403, 200)
    assert active_versions(svc) == [version(other)]
    assert re.search(
        r" INFO authz\.server \[\d+\] policy sha256:\w+ widens access: "
        r"route items: new route GET /v1/items \(public\)",
        svc.log(),
    )


OPENAPI = """\
openapi: 3.1.0
info: {title: reports, version: "1"}
components:
  securitySchemes:
    mesh: {type: mutualTLS}
paths:
  /reports:
    get:
      operationId: listReports
      security: %s
      responses: {"200": {description: ok}}
"""
CONFIGMAP_POLICY = """\
providers:
  mesh: {type: mtls, trust_domains: [prod]}
openapi:
  - file: openapi.yaml
    security_schemes: {mesh: [mesh]}
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
"""


def test_a_configmap_symlink_swap_is_followed(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    """The layout kubelet gives a mounted ConfigMap: each key is a symlink through
    ``..data``, itself a symlink to a timestamped directory; an update writes a new
    directory and renames a new ``..data`` over the old one."""
    mount = tmp_path / "config"

    def publish(name: str, security: str, like: str = "") -> None:
        version_dir = mount / name
        version_dir.mkdir(parents=True)
        for key, text in (("policy.yaml", CONFIGMAP_POLICY), ("openapi.yaml", OPENAPI % security)):
            (version_dir / key).write_text(text)
            if like:  # the same size and mtime as the old version's file
                old = os.stat(mount / like / key)
                os.utime(version_dir / key, ns=(old.st_atime_ns, old.st_mtime_ns))
        (mount / "..data_tmp").symlink_to(name)
        os.replace(mount / "..data_tmp", mount / "..data")

    publish("..2026_12_02_01", "[{mesh: []}]")
    for key in ("policy.yaml", "openapi.yaml"):
        (mount / key).symlink_to(f"..data/{key}")
    svc = start_service(mount / "policy.yaml")
    assert status(svc, path="/reports") == 401
    # Only the OpenAPI document changes, keeping its size and mtime; the old directory
    # stays (kubelet removes it a little later): a watcher of (mtime, size), of resolved
    # paths or of inodes sees no change.
    publish("..2026_12_02_02", "[]          ", like="..2026_12_02_01")
    wait_for(lambda: status(svc, path="/reports") == 200)
    assert "route listReports: becomes public" in svc.log()


def test_sighup_waits_for_the_file_to_settle(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    svc = start_service(policy, "--reload-interval", "0", "--reload-settle", "1.0")
    complete = POLICY.replace("ledger", "payout")
    half = complete[: complete.index("    spiffe_ids:")]
    with open(policy, "w") as f:
        f.write(half)
        f.flush()
        svc.proc.send_signal(signal.SIGHUP)  # reads the half, then reads again
        time.sleep(0.4)
        f.write(complete[len(half) :])
    wait_for(lambda: status(svc, "spiffe://prod/payout") == 200)
    assert status(svc, OTHER) == 403
    assert active_versions(svc) == [version(complete)]


def test_widening_lines_are_bounded_but_every_warning_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = load_policy_bytes(POLICY.encode(), source="p.yaml", base_dir=Path("."))
    added = "".join(
        f"  - {{name: r{i}, path: /r{i}, methods: [GET], public: true}}\n" for i in range(30)
    )
    grown = load_policy_bytes((CUT + added).encode(), source="p.yaml", base_dir=Path("."))
    with caplog.at_level(logging.INFO, logger="authz.server"):
        log_widenings(base, grown, logging.getLogger("authz.server"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 + 20 + 1
    assert caplog.records[0].levelno == logging.WARNING
    assert "loses its spiffe_ids" in lines[0]
    assert lines[-1].endswith("widens access: 10 more grants not listed")
