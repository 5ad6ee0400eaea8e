"""TLS on the service's own listeners (authz.transport.tls), with real certificates:
the reloader takes changed files, keeps the old certificate when new ones cannot be
used, and looks at the files at most once per interval; `authz envoy-config` emits the
matching upstream TLS context; `authz serve` checks its --tls-* flags."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from authz.cli import build_parser as parser
from authz.cli.serve import tls_options
from authz.envoyconf import EnvoyOptions, HostPort, build_bootstrap
from authz.envoyconf.common import EnvoyConfigError
from authz.envoyconf.options import AuthzTlsOptions
from authz.policy.config import PolicyConfig
from authz.transport.tls import CertificateReloader, TlsConfigError, TlsFiles, load
from tests.certs import generate_ca, issue_cert


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def files(tmp_path: Path) -> TlsFiles:
    ca = generate_ca("ca")
    server = issue_cert(ca, "authz", ip_addresses=["127.0.0.1"], server=True).write(tmp_path, "s")
    return TlsFiles(server.cert, server.key, ca.write(tmp_path, "ca").cert)


def serial(reloader: CertificateReloader) -> bytes:
    return reloader.loaded.cert


def rewrite(files: TlsFiles) -> None:
    """A new certificate and key over the same files (a renewal)."""
    ca = generate_ca("ca2")
    issued = issue_cert(ca, "authz-2", ip_addresses=["127.0.0.1"], server=True)
    Path(files.key).write_text(issued.key_pem)
    Path(files.cert).write_text(issued.cert_pem)


def test_changed_files_are_taken_after_the_interval(files: TlsFiles) -> None:
    clock = Clock()
    reloader = CertificateReloader(files, interval=1.0, clock=clock)
    first = serial(reloader)
    rewrite(files)
    assert not reloader.refresh()  # within the interval: not even looked at
    clock.now = 1.5
    assert reloader.refresh() and reloader.reloads == 1
    assert serial(reloader) != first
    assert reloader.ssl_context() is reloader.loaded.context
    clock.now = 3.0
    assert not reloader.refresh()  # unchanged stamps: nothing reread


def test_unusable_new_files_keep_the_old_certificate(files: TlsFiles) -> None:
    clock = Clock()
    reloader = CertificateReloader(files, interval=1.0, clock=clock)
    first = serial(reloader)
    Path(files.cert).write_text("not a certificate\n")
    clock.now = 2.0
    assert not reloader.refresh()
    assert serial(reloader) == first and reloader.reloads == 0
    os.unlink(files.key)
    clock.now = 4.0
    assert not reloader.refresh() and serial(reloader) == first


def test_a_start_with_unusable_files_fails_naming_the_file(tmp_path: Path, files: TlsFiles) -> None:
    with pytest.raises(TlsConfigError, match=r"missing\.key"):
        load(TlsFiles(files.cert, str(tmp_path / "missing.key")))
    other = issue_cert(generate_ca("x"), "x", server=True).write(tmp_path, "other")
    with pytest.raises(TlsConfigError, match="key"):
        load(TlsFiles(files.cert, other.key))  # not the certificate's key


def test_the_grpc_credentials_and_listener_context_build(files: TlsFiles) -> None:
    reloader = CertificateReloader(files)
    assert reloader.grpc_credentials() is not None
    context = reloader.listener_context()
    assert context.sni_callback is not None


def serve_args(*extra: str) -> object:
    return parser().parse_args(["serve", "p.yaml", *extra])


def test_serve_tls_flags(files: TlsFiles) -> None:
    args = serve_args("--tls-cert", files.cert, "--tls-key", files.key)
    assert tls_options(args) == TlsFiles(files.cert, files.key, None)
    with pytest.raises(ValueError, match="go together"):
        tls_options(serve_args("--tls-cert", files.cert))
    with pytest.raises(ValueError, match="needs --tls-cert"):
        tls_options(serve_args("--tls-client-ca", str(files.client_ca)))


def authz_cluster(options: EnvoyOptions) -> dict[str, object]:
    from tests.test_envoy_config import clusters

    return clusters(build_bootstrap(PolicyConfig(version="v", source="s"), options))["authz"]


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_envoy_config_emits_the_upstream_tls_context(transport: str) -> None:
    tls = AuthzTlsOptions(ca="/ca.pem", cert_chain="/envoy.pem", private_key="/envoy.key")
    cluster = authz_cluster(EnvoyOptions(transport=transport, authz_tls=tls))
    socket = cluster["transport_socket"]
    assert isinstance(socket, dict)
    context = socket["typed_config"]
    assert context["@type"].endswith("tls.v3.UpstreamTlsContext")
    common = context["common_tls_context"]
    assert common["tls_certificates"][0]["certificate_chain"] == {"filename": "/envoy.pem"}
    validation = common["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/ca.pem"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
    ]
    assert common["alpn_protocols"] == (["h2"] if transport == "grpc" else ["http/1.1"])


def test_envoy_config_server_name_and_plaintext_default() -> None:
    tls = AuthzTlsOptions(ca="/ca.pem", server_name="authz.internal")
    cluster = authz_cluster(EnvoyOptions(authz=HostPort("authz", 9191), authz_tls=tls))
    socket = cluster["transport_socket"]
    assert isinstance(socket, dict)
    context = socket["typed_config"]
    assert context["sni"] == "authz.internal"
    assert "tls_certificates" not in context["common_tls_context"]
    assert "transport_socket" not in authz_cluster(EnvoyOptions())
    with pytest.raises(EnvoyConfigError, match="together"):
        AuthzTlsOptions(ca="/ca.pem", cert_chain="/c.pem")


def test_envoy_config_cli_flags(files: TlsFiles, tmp_path: Path) -> None:
    from authz.cli.envoy_config import command_line, options_from_args

    ca = str(files.client_ca)
    args = parser().parse_args(
        ["envoy-config", "p.yaml", "--authz-tls-ca", ca, "--authz-tls-cert", files.cert,
         "--authz-tls-key", files.key]
    )  # fmt: skip
    options = options_from_args(args)
    assert options.authz_tls == AuthzTlsOptions(ca, files.cert, files.key)
    assert f"--authz-tls-ca {ca} --authz-tls-cert {files.cert}" in command_line(args)
    lone = parser().parse_args(["envoy-config", "p.yaml", "--authz-tls-cert", files.cert])
    with pytest.raises(EnvoyConfigError, match="need --authz-tls-ca"):
        options_from_args(lone)


def test_workers_get_the_same_tls_flags(files: TlsFiles) -> None:
    from authz.serve_options import ServeOptions
    from authz.supervisor import tls_argv

    assert tls_argv(ServeOptions(policy="p.yaml")) == []
    argv = tls_argv(ServeOptions(policy="p.yaml", tls=files))
    assert tls_options(serve_args(*argv)) == files
