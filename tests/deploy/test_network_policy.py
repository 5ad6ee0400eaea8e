"""deploy/kubernetes NetworkPolicies and the metrics port: each policy port is one the
pods and the Service have, by name and number; the metrics flags, port, Secret key and
the Prometheus scrape config agree."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy.manifests import KUBE, Doc, container, flag, one, render

CLIENT = {"authz.io/client": "true"}
OPERATORS = {"authz.io/operators": "true"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}


def container_ports(docs: tuple[Doc, ...]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(docs)["ports"]}


def ingress_by_port(policy: Doc) -> dict[str, list[Doc]]:
    """Each ingress port (by name) and the peers let in on it."""
    out: dict[str, list[Doc]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            out.setdefault(port["port"], []).extend(rule["from"])
    return out


def test_the_authz_pods_policy_covers_every_port_with_its_own_peers() -> None:
    docs = render("base")
    policy = one(docs, "NetworkPolicy", "authz")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    ports = container_ports(docs)
    service = {p["name"]: p for p in one(docs, "Service", "authz")["spec"]["ports"]}
    peers = ingress_by_port(policy)
    # every port the pods open, and only those, by the names the Service targets
    assert set(peers) == set(ports) == {p["targetPort"] for p in service.values()}
    for name in peers:
        assert service[name]["port"] == ports[name], name
    for name in ("grpc", "http"):  # ext_authz: labelled client pods in any namespace
        assert peers[name] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": CLIENT}}]
    assert peers["control"] == [{"namespaceSelector": {"matchLabels": OPERATORS}}]
    assert peers["metrics"] == [{"namespaceSelector": {"matchLabels": MONITORING}}]


def test_the_authz_pods_egress_is_dns_and_https_only() -> None:
    egress = one(render("base"), "NetworkPolicy", "authz")["spec"]["egress"]
    dns, https = egress
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    # issuers and JWKS URLs cannot be named by host in a NetworkPolicy: any address, 443
    assert https == {"ports": [{"port": 443, "protocol": "TCP"}]}


def test_the_redis_overlay_opens_egress_to_its_redis_only() -> None:
    docs = render("overlays/redis")
    (rule,) = one(docs, "NetworkPolicy", "authz-to-redis")["spec"]["egress"]
    service = one(docs, "Service", "authz-redis")["spec"]
    redis_pod = one(docs, "Deployment", "authz-redis")["spec"]["template"]["metadata"]["labels"]
    assert rule["ports"] == [{"port": service["ports"][0]["port"], "protocol": "TCP"}]
    (peer,) = rule["to"]
    assert peer["podSelector"]["matchLabels"].items() <= redis_pod.items()
    assert peer["podSelector"]["matchLabels"] == service["selector"]
    authz_pod = one(docs, "Deployment", "authz")["spec"]["template"]["metadata"]["labels"]
    spec = one(docs, "NetworkPolicy", "authz-to-redis")["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= authz_pod.items()
    assert spec["policyTypes"] == ["Egress"]


def test_the_istio_overlay_lets_the_sidecar_reach_istiod() -> None:
    spec = one(render("overlays/istio"), "NetworkPolicy", "authz-istiod")["spec"]
    (rule,) = spec["egress"]
    assert rule["ports"] == [{"port": 15012, "protocol": "TCP"}]
    assert spec["policyTypes"] == ["Egress"]


def test_the_metrics_flags_port_secret_and_scrape_config_agree() -> None:
    docs = render("base")
    c = container(docs)
    args = c["args"]
    host, port = flag(args, "--metrics").rsplit(":", 1)
    assert host == "0.0.0.0"
    assert container_ports(docs)["metrics"] == int(port)
    service = {p["name"]: p for p in one(docs, "Service", "authz")["spec"]["ports"]}
    assert service["metrics"] == {
        "name": "metrics", "port": int(port), "targetPort": "metrics",
        "protocol": "TCP", "appProtocol": "http",
    }  # fmt: skip
    # the token comes from the Secret's metrics-token key, mounted with the others
    token = Path(flag(args, "--metrics-token-file"))
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert str(token.parent) == mounts["secrets"]
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (secret,) = [v["secret"] for v in volumes if "secret" in v]
    assert {"key": "metrics-token", "path": token.name} in secret["items"]
    # the scrape config: the Service's namespace, name and port name, a bearer token file
    scrape = yaml.safe_load((KUBE / "prometheus-scrape.yaml").read_text())
    (job,) = scrape["scrape_configs"]
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["namespaces"]["names"] == [one(docs, "Namespace")["metadata"]["name"]]
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep"
    assert keep["regex"] == f"{one(docs, 'Service', 'authz')['metadata']['name']};metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert Path(job["authorization"]["credentials_file"]).name == "metrics-token"
