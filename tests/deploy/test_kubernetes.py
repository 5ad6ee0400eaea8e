"""deploy/kubernetes: every kustomization renders, every resource passes the Kubernetes
schemas (offline, kubernetes-validate), and the manifests agree with each other, with
`authz serve` and with the image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from authz.health import DECISION_LOG_HEALTH
from tests.deploy.manifests import (
    CRD_KINDS,
    KUBE,
    ROOT,
    TARGETS,
    compose,
    container,
    flag,
    kubectl,
    one,
    policy_text,
    render,
)

AUTHZ = str(Path(sys.executable).parent / "authz")


@pytest.mark.parametrize("target", TARGETS)
def test_every_resource_passes_the_kubernetes_schemas(target: str) -> None:
    version = kubernetes_validate.latest_version()
    unknown = set()
    for doc in render(target):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.add(doc["kind"])
    # only the CRDs' kinds are missing from the schemas (test_istio_gateway checks them)
    assert unknown <= CRD_KINDS, unknown


def test_a_broken_manifest_is_caught() -> None:
    """The validation is not vacuous: a misspelt field fails strict validation."""
    deployment = dict(one(render("base"), "Deployment"))
    deployment["spec"] = {**deployment["spec"], "replica": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("target", ["base", "overlays/redis"])
def test_the_policy_in_the_configmap_is_valid(target: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(render(target)))
    result = subprocess.run([AUTHZ, "validate", str(policy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_redis_overlay_points_the_stores_at_its_redis() -> None:
    docs = render("overlays/redis")
    service = one(docs, "Service", "authz-redis")
    port = service["spec"]["ports"][0]["port"]
    url = f"redis://authz-redis.authz-system.svc.cluster.local:{port}/"
    text = policy_text(docs)
    assert text.count(url) == 2  # rate-limit store and enforcement (blocks, revocations)
    redis = container(docs, "authz-redis")
    assert redis["ports"][0]["containerPort"] == service["spec"]["ports"][0]["port"]
    policy = one(docs, "NetworkPolicy", "authz-redis")["spec"]
    assert policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "authz"
    }


def test_ports_agree_across_args_container_service_and_probes() -> None:
    docs = render("base")
    c = container(docs)
    args = c["args"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {
        "grpc": int(flag(args, "--grpc").rsplit(":", 1)[1]),
        "http": int(flag(args, "--http").rsplit(":", 1)[1]),
        "control": int(flag(args, "--control").rsplit(":", 1)[1]),
        "metrics": int(flag(args, "--metrics").rsplit(":", 1)[1]),
    }
    service = one(docs, "Service", "authz")["spec"]["ports"]
    assert {p["name"]: p["targetPort"] for p in service} == {n: n for n in ports}
    assert {p["name"]: p["port"] for p in service} == ports
    # start-up and readiness ask grpc.health.v1 of the whole server on the gRPC port;
    # liveness the decision log's name, which stale keys and draining leave SERVING
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["grpc"] == {"port": ports["grpc"]}, probe
    assert c["livenessProbe"]["grpc"] == {"port": ports["grpc"], "service": DECISION_LOG_HEALTH}


def test_workers_come_from_the_cpu_request() -> None:
    c = container(render("base"))
    assert flag(c["args"], "--workers") == "$(AUTHZ_WORKERS)"
    env = {e["name"]: e for e in c["env"]}
    ref = env["AUTHZ_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert ref == {"containerName": "authz", "resource": "requests.cpu", "divisor": "1"}
    assert c["resources"]["requests"]["cpu"] == "2"


def test_every_file_the_args_name_is_mounted() -> None:
    docs = render("base")
    c = container(docs)
    args = c["args"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    # the policy: a whole-directory ConfigMap mount (a subPath mount never updates)
    policy = Path(args[1])
    assert "subPath" not in mounts["policy"]
    assert str(policy.parent) == mounts["policy"]["mountPath"]
    assert volumes["policy"]["configMap"]["name"] == "authz-policy"
    assert policy.name in one(docs, "ConfigMap", "authz-policy")["data"]
    # the secrets: each file a flag reads is an item of the Secret volume
    items = {i["path"]: i["key"] for i in volumes["secrets"]["secret"]["items"]}
    for name in ("--http-secret-file", "--control-token-file", "--metrics-token-file"):
        path = Path(flag(args, name))
        assert str(path.parent) == mounts["secrets"]["mountPath"], name
        assert path.name in items, name
    assert volumes["secrets"]["secret"]["secretName"] == "authz-secrets"
    # the writable paths are emptyDirs
    env = {e["name"]: e.get("value") for e in c["env"]}
    for var, volume in (("XDG_RUNTIME_DIR", "runtime"), ("TMPDIR", "tmp")):
        assert env[var] == mounts[volume]["mountPath"], var
        assert "emptyDir" in volumes[volume], var


def test_every_flag_in_the_args_is_one_authz_serve_takes() -> None:
    helptext = subprocess.run(
        [AUTHZ, "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for arg in container(render("base"))["args"]:
        if arg.startswith("--"):
            assert f"{arg} " in helptext, arg


def test_the_pod_is_locked_down() -> None:
    docs = render("base")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(docs)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    namespace = one(docs, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    # the image's user is the one the pod runs as
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {pod['securityContext']['runAsUser']}:" in dockerfile


def test_replicas_spread_and_a_disruption_budget_keep_it_up() -> None:
    docs = render("base")
    spec = one(docs, "Deployment")["spec"]
    assert spec["replicas"] >= 3
    labels = spec["template"]["metadata"]["labels"]
    keys = {t["topologyKey"] for t in spec["template"]["spec"]["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert 0 < pdb["minAvailable"] < spec["replicas"]


def test_overlays_keep_the_base() -> None:
    base = {(d["kind"], d["metadata"]["name"]) for d in render("base")}
    for target in ("overlays/redis", "overlays/istio", "overlays/envoy-gateway"):
        assert base <= {(d["kind"], d["metadata"]["name"]) for d in render(target)}, target


def test_the_kustomizations_list_every_file() -> None:
    """No manifest lies about unused: each YAML file is a resource or patch of its
    kustomization (mesh-config.yaml is istioctl's install file, not a resource)."""
    for kustomization in KUBE.rglob("kustomization.yaml"):
        k = yaml.safe_load(kustomization.read_text())
        named = set(k.get("resources", [])) | {
            p["path"] for p in k.get("patches", []) if "path" in p
        }
        here = {p.name for p in kustomization.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert here - named <= {"mesh-config.yaml"}, kustomization


@pytest.mark.parametrize("target", TARGETS)
def test_the_fallback_renderer_gives_what_kubectl_kustomize_gives(target: str) -> None:
    """Without kubectl the tests render in Python (compose): it must agree with kubectl."""
    kubectl()  # skips without it

    def key(doc: dict[str, object]) -> str:
        return yaml.safe_dump(doc, sort_keys=True)

    assert sorted(map(key, compose(KUBE / target))) == sorted(map(key, render(target)))


def test_draining_outlasts_the_readiness_probe_and_fits_the_grace_period() -> None:
    """SIGTERM turns health NOT_SERVING; the pod keeps answering for --drain-delay, long
    enough for readiness to fail and the endpoints to drop it, then drains in-flight
    calls, all inside terminationGracePeriodSeconds."""
    docs = render("base")
    c = container(docs)
    ready = c["readinessProbe"]
    delay = float(flag(c["args"], "--drain-delay"))
    assert delay >= ready["periodSeconds"] * ready["failureThreshold"]
    grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert delay + float(flag(c["args"], "--drain-timeout")) < grace
