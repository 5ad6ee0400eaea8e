"""`authz serve` warns about a secret file only when users outside its owner and group
can read it: Kubernetes mounts a Secret for a non-root pod as 0440 with the fsGroup."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from authz.demo.stack import free_port
from authz.secret_mode import warn_if_others_can_read
from tests.support import ServiceProcess

POLICY = """\
mode: enforce
undeclared_routes: deny
providers:
  mesh: {type: mtls, trust_domains: [demo.local]}
routes:
  - {name: mesh-only, path: /v1/mesh, methods: [GET], providers: [mesh]}
"""
SECRET = "0123456789abcdef0123456789abcdef"


def secret_file(tmp_path: Path, name: str, mode: int) -> Path:
    path = tmp_path / name
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("mode", "warns"),
    [(0o600, False), (0o400, False), (0o640, False), (0o440, False), (0o660, False),
     (0o644, True), (0o444, True), (0o604, True), (0o601, True)],
)  # fmt: skip
def test_only_the_other_bits_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warns: bool
) -> None:
    path = secret_file(tmp_path, "secret", mode)
    with caplog.at_level(logging.WARNING, logger="authz"):
        assert warn_if_others_can_read("--http-secret-file", str(path)) is warns
    messages = [r.getMessage() for r in caplog.records]
    if warns:
        assert messages == [
            f"--http-secret-file {path} can be read by other users (not its owner or group); "
            "chmod o-rwx it (600, or 640/440 for a group such as a pod's fsGroup)"
        ]
    else:
        assert messages == []


def test_serve_is_quiet_for_a_group_readable_secret_and_warns_for_a_world_readable_one(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    http_secret = secret_file(tmp_path, "http-secret", 0o440)  # a pod's Secret volume
    control_token = secret_file(tmp_path, "control-token", 0o444)
    svc = start_service(
        policy,
        "--http", f"127.0.0.1:{free_port()}", "--http-secret-file", str(http_secret),
        "--control", f"127.0.0.1:{free_port()}", "--control-token-file", str(control_token),
    )  # fmt: skip
    log = svc.log()
    assert f"--http-secret-file {http_secret}" not in log
    assert f"--control-token-file {control_token} can be read by other users" in log
