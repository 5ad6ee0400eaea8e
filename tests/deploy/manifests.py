"""The deploy/kubernetes manifests as kustomize renders them, and lookups into them."""

from __future__ import annotations

import copy
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
    """What ``kubectl apply -k deploy/kubernetes/TARGET`` applies: ``kubectl
    kustomize``'s output, or without kubectl (not in Debian or PyPI) :func:`compose`'s."""
    if shutil.which("kubectl") is None:
        return compose(KUBE / target)
    out = subprocess.run(
        [kubectl(), "kustomize", str(KUBE / target)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


#: kinds without a namespace (the only cluster-scoped ones our manifests hold)
CLUSTER_SCOPED = {"Namespace"}


def compose(directory: Path) -> tuple[Doc, ...]:
    """The subset of kustomize our kustomizations use: ``resources`` (files and
    directories), ``namespace``, ``labels`` (metadata only), and ``patches`` that are
    whole-resource merges (``path``) or JSON patches with ``add`` (``target``).
    tests/deploy/test_kubernetes.py checks it gives kubectl's output where kubectl exists."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for resource in k.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs += [copy.deepcopy(d) for d in compose(path)]
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        if "namespace" in k and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = k["namespace"]
        for labels in k.get("labels", []):
            doc["metadata"].setdefault("labels", {}).update(labels["pairs"])
    for patch in k.get("patches", []):
        if "path" in patch:
            change = yaml.safe_load((directory / patch["path"]).read_text())
            (doc,) = [d for d in docs if _same(d, change)]
            _merge(doc, change)
        else:
            target = patch["target"]
            (doc,) = [d for d in docs if d["kind"] == target["kind"]
                      and d["metadata"]["name"] == target["name"]]  # fmt: skip
            for op in yaml.safe_load(patch["patch"]):
                assert op["op"] == "add", op
                *parents, last = op["path"].strip("/").split("/")
                node = doc
                for part in parents:
                    node = node.setdefault(part, {})
                node[last] = op["value"]
    return tuple(docs)


def _same(doc: Doc, other: Doc) -> bool:
    return bool(
        doc["kind"] == other["kind"] and doc["metadata"]["name"] == other["metadata"]["name"]
    )


def _merge(into: Doc, change: Doc) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


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


def main() -> None:
    """``python -m tests.deploy.manifests DIR``: :func:`compose`'s rendering of a
    kustomization as YAML (the README test's stand-in for ``kubectl kustomize DIR``
    on a machine without kubectl)."""
    import sys

    (directory,) = sys.argv[1:]
    sys.stdout.write(yaml.safe_dump_all(compose(Path(directory)), sort_keys=False))


if __name__ == "__main__":
    main()
