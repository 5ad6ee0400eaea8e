"""``authz envoy-config --tracing HOST:PORT``: Envoy's own spans (OpenTelemetry tracer)
to the OTLP collector, on both transports, accepted by ``envoy --mode validate``;
without the flag, no tracing. (Spans through a real Envoy: tests/e2e/test_tracing_through_envoy.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from authz.cli.envoy_config import command_line, generate
from authz.envoyconf import EnvoyOptions, HostPort, build_bootstrap
from authz.envoyconf.common import TRACING_CLUSTER
from authz.envoyconf.tracing import TRACER
from authz.policy.loader import load_policy
from tests.test_envoy_config import DEMO, cluster_address, clusters, envoy_validate, hcm, parser

COLLECTOR = HostPort("127.0.0.1", 4317)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_envoy_traces_to_the_collector(transport: str) -> None:
    config = build_bootstrap(DEMO, EnvoyOptions(transport=transport, tracing=COLLECTOR))
    tracing = hcm(config)["tracing"]
    assert tracing["provider"]["name"] == TRACER
    otel = tracing["provider"]["typed_config"]
    assert otel["grpc_service"]["envoy_grpc"]["cluster_name"] == TRACING_CLUSTER
    assert otel["service_name"] == "envoy"
    cluster = clusters(config)[TRACING_CLUSTER]
    assert cluster_address(cluster) == ("127.0.0.1", 4317)
    assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"])


def test_without_the_flag_envoy_does_not_trace() -> None:
    config = build_bootstrap(DEMO, EnvoyOptions())
    assert "tracing" not in hcm(config)
    assert TRACING_CLUSTER not in clusters(config)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_the_command_writes_a_config_envoy_accepts(tmp_path: Path, transport: str) -> None:
    policy = Path(__file__).resolve().parents[1] / "examples" / "policy.yaml"
    out = tmp_path / "envoy.yaml"
    args = parser().parse_args(
        ["envoy-config", str(policy), "--transport", transport,
         "--tracing", "127.0.0.1:4317", "-o", str(out)]
    )  # fmt: skip
    assert "--tracing 127.0.0.1:4317" in command_line(args)
    out.write_text(generate(load_policy(policy), args))
    assert "tracing" in hcm(yaml.safe_load(out.read_text()))
    envoy_validate(out)
