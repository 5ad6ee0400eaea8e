"""Detection in a real `authz serve`: the service starts the scorer, a honeypot hit
becomes an action on `authz.detect` (and the metrics) within a few drain intervals."""

from __future__ import annotations

from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.transport.envoy_grpc import build_check_request
from tests.support import ServiceProcess, wait_for

POLICY = """\
mode: enforce
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
detection:
  mode: monitor
  detectors:
    honeypot: {paths: ["/.env", "/.git/**"]}
"""


def test_a_honeypot_hit_in_the_service_is_actioned(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    service = ServiceProcess(policy, tmp_path).wait_serving()
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            reply = stub.Check(
                build_check_request(method="GET", path="/.git/config", host="api.local",
                                    headers={}, source_address="198.51.100.7"),
                timeout=5,
            )  # fmt: skip
            assert reply.denied_response.status.code == 404  # undeclared: a 404 as ever
            wait_for(lambda: "action honeypot block address=198.51.100.7" in service.log())
        assert "(monitor)" in service.log()  # the section's mode
    finally:
        assert service.stop() == 0
