"""``authz serve --otlp-metrics``: the metrics seam's series reach a real OTLP gRPC
receiver (the collector's MetricsService) as OTLP metrics, with the decisions by
route, decision and reason, and the last values sent at a stop."""

from __future__ import annotations

from pathlib import Path

from authz.demo.stack import free_port
from tests.support import ServiceProcess, wait_for
from tests.telemetry.otlp_receiver import OtlpReceiver
from tests.telemetry.test_otlp_traces import KEY, POLICY, _http_check, _http_up


def _latest(rx: OtlpReceiver, name: str, **labels: str) -> float:
    found = [
        v
        for _, n, attrs, v in list(rx.points)
        if n == name and all(attrs.get(k) == want for k, want in labels.items())
    ]
    return found[-1] if found else 0.0


def test_decision_counts_arrive_over_otlp(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    http_port = free_port()
    with OtlpReceiver() as rx:
        svc = ServiceProcess(
            policy, tmp_path, "--http", f"127.0.0.1:{http_port}",
            "--otlp-endpoint", rx.endpoint, "--otlp-metrics", "--otlp-metrics-interval", "0.5",
            "--service-name", "authz-metrics",
        )  # fmt: skip
        try:
            svc.wait_serving()
            wait_for(lambda: _http_up(http_port))
            for _ in range(3):
                assert _http_check(http_port, "/v1/orders/7", {"x-api-key": KEY}) == 200
            assert _http_check(http_port, "/v1/admin", {"x-api-key": KEY}) == 403
            wait_for(
                lambda: _latest(rx, "authz_decisions_total", reason="insufficient_scope") == 1,
                timeout=20,
            )
            assert _http_check(http_port, "/v1/orders/8", {}) == 401
        finally:
            assert svc.stop() == 0
        # the stop's last export has the decision made just before it
        assert _latest(rx, "authz_decisions_total", reason="missing_credential") == 1
        assert _latest(rx, "authz_decisions_total", route="get-order", decision="allow") == 3
        services = {service for service, _, _, _ in rx.points}
        names = {name for _, name, _, _ in rx.points}
    assert services == {"authz-metrics"}
    assert any(n.startswith("authz_decision_latency") for n in names), names
    # bounded labels only: no key, no path, no address
    labels = repr([attrs for _, _, attrs, _ in rx.points])
    assert KEY not in labels and "/v1/orders/7" not in labels and "127.0.0.1" not in labels
