"""The deploy/kubernetes manifests as kustomize renders them, and lookups into them."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
#: every kustomization a user applies: the base and each overlay
TARGETS = ("base", "overlays/redis", "overlays/istio", "overlays/envoy-gateway")
#: kinds from CRDs: the Kubernetes schemas do not have them (checked field by field)
CRD_KINDS = {"AuthorizationPolicy", "SecurityPolicy", "ReferenceGrant"}

Doc = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl (its built-in kustomize) is not installed")
    return found


@cache
def render(target: str) -> tuple[Doc, ...]:
    """``kubectl kustomize deploy/kubernetes/TARGET``: what ``kubectl apply -k`` applies."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(KUBE / target)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def container(docs: tuple[Doc, ...], deployment: str = "authz") -> Doc:
    spec = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return dict(spec["containers"][0])


def flag(args: list[str], name: str) -> str:
    """The value after ``name`` in a container's args."""
    return args[args.index(name) + 1]


def policy_text(docs: tuple[Doc, ...]) -> str:
    return str(one(docs, "ConfigMap", "authz-policy")["data"]["policy.yaml"])


def mesh_config() -> Doc:
    return dict(yaml.safe_load((KUBE / "overlays/istio/mesh-config.yaml").read_text()))
