"""Per-trust-domain CA bundles: the policy's ``trust_bundles`` (located errors) and
the SPIFFE certificate validator ``authz envoy-config`` emits from them."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from authz.envoyconf import EnvoyOptions, TlsOptions, build_bootstrap
from authz.envoyconf.common import EnvoyConfigError
from authz.errors import PolicyError
from authz.policy.config import MtlsProviderConfig
from authz.policy.loader import load_policy
from tests.certs import generate_ca, issue_cert


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bundles")
    a, b = generate_ca("a CA"), generate_ca("b CA")
    a.write(d, "a")
    b.write(d, "b")
    issue_cert(a, "leaf", uris=["spiffe://a.local/x"], client=True).write(d, "leaf")
    issue_cert(a, "localhost", dns_names=["localhost"], server=True).write(d, "server")
    (d / "junk.pem").write_text("not a certificate\n")
    return d


def write_policy(d: Path, mesh: str, extra: str = "") -> Path:
    path = d / "policy.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        providers:
          mesh: {mesh}
        {extra}
        routes:
          - {{name: r, path: /r, methods: [GET], providers: [mesh]}}
        """)
    )
    return path


def test_bundles_are_resolved_against_the_policy_file(files: Path) -> None:
    policy = load_policy(
        write_policy(
            files,
            "{type: mtls, trust_domains: [a.local, b.local],"
            " trust_bundles: {a.local: a.crt, b.local: " + str(files / "b.crt") + "}}",
        )
    )
    (mesh,) = policy.providers
    assert isinstance(mesh, MtlsProviderConfig)
    assert mesh.trust_bundles == (
        ("a.local", str(files / "a.crt")),
        ("b.local", str(files / "b.crt")),
    )


@pytest.mark.parametrize(
    ("bundles", "message"),
    [
        ("{a.local: a.crt}", "no bundle for trust domain 'b.local'"),
        ("{a.local: a.crt, b.local: b.crt, c.local: a.crt}", "'c.local' is not one of"),
        ("{a.local: a.crt, b.local: missing.crt}", "cannot read"),
        ("{a.local: a.crt, b.local: junk.pem}", "no PEM certificate in it"),
        ("{a.local: a.crt, b.local: leaf.crt}", "is not a CA certificate"),
    ],
)
def test_bad_bundles_are_located_errors(files: Path, bundles: str, message: str) -> None:
    path = write_policy(
        files, f"{{type: mtls, trust_domains: [a.local, b.local], trust_bundles: {bundles}}}"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    ((where, text),) = info.value.problems
    assert where.startswith(str(path) + ":")
    assert "$.providers.mesh.trust_bundles" in text and message in text


def _tls_context(rendered: dict[str, Any]) -> Any:
    chain = rendered["static_resources"]["listeners"][0]["filter_chains"][0]
    return chain["transport_socket"]["typed_config"]


def test_envoy_config_emits_the_spiffe_validator(files: Path) -> None:
    import yaml

    from authz.envoyconf import render_yaml

    policy = load_policy(
        write_policy(
            files,
            "{type: mtls, trust_domains: [b.local, a.local],"
            " trust_bundles: {a.local: a.crt, b.local: b.crt}}",
        )
    )
    tls = TlsOptions(str(files / "server.crt"), str(files / "server.key"))
    out = yaml.safe_load(render_yaml(build_bootstrap(policy, EnvoyOptions(tls=tls))))
    context = _tls_context(out)
    assert context["require_client_certificate"] is True
    validator = context["common_tls_context"]["validation_context"]["custom_validator_config"]
    assert validator["name"] == "envoy.tls.cert_validator.spiffe"
    config = validator["typed_config"]
    assert config["@type"].endswith("tls.v3.SPIFFECertValidatorConfig")
    assert config["trust_domains"] == [
        {"name": "a.local", "trust_bundle": {"filename": str(files / "a.crt")}},
        {"name": "b.local", "trust_bundle": {"filename": str(files / "b.crt")}},
    ]
    assert "trusted_ca" not in context["common_tls_context"]["validation_context"]


def test_client_ca_and_trust_bundles_do_not_mix(files: Path) -> None:
    policy = load_policy(
        write_policy(
            files,
            "{type: mtls, trust_domains: [a.local], trust_bundles: {a.local: a.crt}}",
        )
    )
    tls = TlsOptions(
        str(files / "server.crt"), str(files / "server.key"), client_ca=str(files / "a.crt")
    )
    with pytest.raises(EnvoyConfigError, match="drop --client-ca"):
        build_bootstrap(policy, EnvoyOptions(tls=tls))


def test_every_mtls_provider_needs_its_bundles(files: Path) -> None:
    policy = load_policy(
        write_policy(
            files,
            "{type: mtls, trust_domains: [a.local], trust_bundles: {a.local: a.crt}}",
            "  other: {type: mtls, trust_domains: [b.local]}",
        )
    )
    tls = TlsOptions(str(files / "server.crt"), str(files / "server.key"))
    with pytest.raises(EnvoyConfigError, match="other have no trust_bundles"):
        build_bootstrap(policy, EnvoyOptions(tls=tls))


def test_one_domain_cannot_have_two_bundles(files: Path) -> None:
    policy = load_policy(
        write_policy(
            files,
            "{type: mtls, trust_domains: [a.local], trust_bundles: {a.local: a.crt}}",
            "  other: {type: mtls, trust_domains: [a.local], trust_bundles: {a.local: b.crt}}",
        )
    )
    tls = TlsOptions(str(files / "server.crt"), str(files / "server.key"))
    with pytest.raises(EnvoyConfigError, match="two trust bundles"):
        build_bootstrap(policy, EnvoyOptions(tls=tls))
