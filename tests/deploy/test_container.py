"""The image and the compose file: a pinned base, runtime dependencies only, non-root,
a read-only root, a gRPC health check; `docker-compose config` accepts the compose
file; ports and users agree with the Kubernetes manifests and `authz envoy-config`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import ROOT, container, flag, one, render

AUTHZ = str(Path(sys.executable).parent / "authz")
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def compose_config() -> dict[str, Any]:
    """``docker-compose config``: the compose file as Docker Compose reads it."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (scripts/test installs it)")
    result = subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def healthcheck() -> list[str]:
    (line,) = re.findall(r"^\s+CMD (\[.*\])$", DOCKERFILE, re.M)
    return list(json.loads(line))


def grpc_port() -> int:
    return int(flag(container(render("base"))["args"], "--grpc").rsplit(":", 1)[1])


def test_the_base_image_is_pinned_by_digest() -> None:
    (pin,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", pin)
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms)


def test_only_runtime_dependencies_are_installed() -> None:
    installs = re.findall(r"pip install (.*?)(?:\\|$)", DOCKERFILE, re.M)
    assert installs and all("[" not in i for i in installs), installs  # no extras
    assert "COPY tests" not in DOCKERFILE and "apt-get" not in DOCKERFILE
    # the run stage takes the built venv only
    run_stage = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert "COPY --from=build /opt/authz /opt/authz" in run_stage
    assert "pip install" not in run_stage


def test_the_image_user_is_non_root_and_the_pods() -> None:
    (user,) = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M)
    assert int(user[0]) != 0
    pod = one(render("base"), "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user[0]), int(user[1]))


def test_the_health_check_asks_the_grpc_port_everyone_uses() -> None:
    port = grpc_port()
    assert healthcheck()[:2] == ["python", "-c"]
    assert f"'127.0.0.1:{port}'" in healthcheck()[2]
    assert re.search(rf"^EXPOSE {port} ", DOCKERFILE, re.M)
    # `authz envoy-config` points Envoy's authz cluster at the same port by default
    helptext = subprocess.run(
        [AUTHZ, "envoy-config", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert f"(default 127.0.0.1:{port})" in " ".join(helptext.split())


def test_docker_compose_config_accepts_the_compose_file() -> None:
    services = compose_config()["services"]
    authz = services["authz"]
    assert flag(authz["command"], "--grpc") == f"0.0.0.0:{grpc_port()}"
    # the compose health check is the image's: grpc.health.v1 on the --grpc port
    assert authz["healthcheck"]["test"] == ["CMD", *healthcheck()]
    for name in ("authz", "upstream", "issuer"):
        assert services[name]["read_only"] is True, name
        assert "/tmp" in services[name]["tmpfs"], name
    for name in ("upstream", "issuer"):  # no gRPC health there
        assert services[name]["healthcheck"]["test"] == ["NONE"], name  # disable: true
    assert services["envoy"]["depends_on"]["authz"]["condition"] == "service_healthy"


def test_docker_compose_config_refuses_a_broken_file(tmp_path: Path) -> None:
    """Not vacuous: a misspelt key fails `docker-compose config`."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (scripts/test installs it)")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  a:\n    image: x\n    comand: [y]\n")
    result = subprocess.run(
        [tool, "-f", str(broken), "config"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
