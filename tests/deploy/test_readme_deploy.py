"""The README's "Deploying on Kubernetes": its checked commands run and pass here, and
the cluster commands name what the manifests use (namespace, Secret, keys, overlay)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.deploy.manifests import KUBE, ROOT, kubectl, one, render

SECTION = (ROOT / "README.md").read_text().split("## Deploying on Kubernetes\n", 1)[1]
SECTION = SECTION.split("\n## ", 1)[0]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def block(lang: str) -> list[str]:
    (found,) = re.findall(rf"```{lang}\n(.*?)```", SECTION, flags=re.S)
    return [line for line in found.splitlines() if line.strip()]


def test_the_checked_commands_are_the_ones_the_tests_run() -> None:
    assert block("bash") == [
        "kubectl kustomize deploy/kubernetes/overlays/redis"
        " | kubernetes-validate --strict --quiet -",
        "docker-compose config --quiet",
    ]
    kubectl()  # skips without it
    for line in block("bash"):
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, (line, result.stdout, result.stderr)


def test_the_cluster_commands_name_what_the_manifests_use() -> None:
    create_ns, _, secret, apply = block("sh")
    docs = render("base")
    namespace = one(docs, "Namespace")["metadata"]["name"]
    assert create_ns == f"kubectl create namespace {namespace}"
    words = secret.split()
    assert words[:3] == ["kubectl", "-n", namespace]
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (spec,) = [v["secret"] for v in volumes if "secret" in v]
    assert words[words.index("generic") + 1] == spec["secretName"]
    keys = {w.split("=")[1] for w in words if w.startswith("--from-file=")}
    assert keys == {item["key"] for item in spec["items"]}
    target = apply.removeprefix("kubectl apply -k ")
    assert (ROOT / target / "kustomization.yaml").is_file()
    assert (ROOT / target).resolve().is_relative_to(KUBE)


def test_every_overlay_is_in_the_file_table() -> None:
    for overlay in (KUBE / "overlays").iterdir():
        assert f"`overlays/{overlay.name}/`" in SECTION, overlay.name
