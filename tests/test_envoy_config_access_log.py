"""``authz envoy-config --access-log HOST:PORT``: Envoy's gRPC access log to the service,
on both transports, accepted by ``envoy --mode validate``; without the flag, nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.cli.envoy_config import command_line, generate
from authz.envoyconf import EnvoyOptions, HostPort, build_bootstrap
from authz.envoyconf.accesslog import HTTP_GRPC_LOGGER, LOG_NAME
from authz.envoyconf.common import ACCESS_LOG_CLUSTER
from tests.test_envoy_config import DEMO, cluster_address, clusters, envoy_validate, hcm, parser

ALS = HostPort("127.0.0.1", 9194)


def loggers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {log["name"]: log["typed_config"] for log in hcm(config)["access_log"]}


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_access_log_streams_to_the_service(transport: str) -> None:
    config = build_bootstrap(DEMO, EnvoyOptions(transport=transport, access_log=ALS))
    grpc_log = loggers(config)[HTTP_GRPC_LOGGER]
    common = grpc_log["common_config"]
    assert common["log_name"] == LOG_NAME
    assert common["grpc_service"]["envoy_grpc"]["cluster_name"] == ACCESS_LOG_CLUSTER
    assert common["transport_api_version"] == "V3"
    cluster = clusters(config)[ACCESS_LOG_CLUSTER]
    assert cluster_address(cluster) == ("127.0.0.1", 9194)
    protocol = cluster["typed_extension_protocol_options"]
    assert "http2_protocol_options" in str(protocol)  # gRPC needs HTTP/2
    assert "health_checks" not in cluster  # a sink that is down only loses entries
    # the stdout log is kept: the gRPC one is added, on the connection manager, so
    # public routes (which skip ext_authz) are logged too
    assert "envoy.access_loggers.stdout" in loggers(config)


def test_without_the_flag_there_is_no_grpc_log() -> None:
    config = build_bootstrap(DEMO, EnvoyOptions())
    assert HTTP_GRPC_LOGGER not in loggers(config)
    assert ACCESS_LOG_CLUSTER not in clusters(config)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_the_command_writes_a_config_envoy_accepts(tmp_path: Path, transport: str) -> None:
    policy = Path(__file__).resolve().parents[1] / "examples" / "policy.yaml"
    out = tmp_path / "envoy.yaml"
    args = parser().parse_args(
        ["envoy-config", str(policy), "--transport", transport,
         "--access-log", "127.0.0.1:9194", "-o", str(out)]
    )  # fmt: skip
    assert "--access-log 127.0.0.1:9194" in command_line(args)
    from authz.policy.loader import load_policy

    out.write_text(generate(load_policy(policy), args))
    config = yaml.safe_load(out.read_text())
    assert HTTP_GRPC_LOGGER in loggers(config)
    envoy_validate(out)


def test_a_bad_address_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["envoy-config", "p.yaml", "--access-log", "nowhere"])
    assert exc.value.code == 2
    assert "--access-log" in capsys.readouterr().err


def test_a_secret_rides_on_the_stream(tmp_path: Path) -> None:
    import os
    import stat

    from authz.transport.envoy_http import SECRET_HEADER

    policy = Path(__file__).resolve().parents[1] / "examples" / "policy.yaml"
    secret = tmp_path / "als.secret"
    secret.write_text("a" * 64 + "\n")
    out = tmp_path / "envoy.yaml"
    args = parser().parse_args(
        ["envoy-config", str(policy), "--access-log", "127.0.0.1:9194",
         "--access-log-secret-file", str(secret), "-o", str(out)]
    )  # fmt: skip
    assert args.func(args) == 0
    config = yaml.safe_load(out.read_text())
    service = loggers(config)[HTTP_GRPC_LOGGER]["common_config"]["grpc_service"]
    assert service["initial_metadata"] == [{"key": SECRET_HEADER, "value": "a" * 64}]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600  # it holds the secret
    assert "access-log secret" in out.read_text().split("static_resources")[0]
    envoy_validate(out)


def test_a_secret_without_the_access_log_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "als.secret"
    secret.write_text("a" * 64 + "\n")
    args = parser().parse_args(["envoy-config", "p.yaml", "--access-log-secret-file", str(secret)])
    assert args.func(args) == 2
    assert "--access-log-secret-file needs --access-log" in capsys.readouterr().err
