"""Tracing set by the policy (``telemetry.tracing``): loaded and validated with the
policy, replacing the command line's flags while that policy serves, changed by a
reload without a restart; through a real ``authz serve`` and a real OTLP receiver."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from authz.errors import PolicyError
from authz.policy.loader import load_policy_bytes
from authz.policy.telemetry_config import TracingConfig
from authz.stages import Shared
from authz.telemetry.options import TelemetryOptions
from authz.telemetry.runtime import Telemetry
from tests.support import ServiceProcess, wait_for
from tests.telemetry.otlp_receiver import OtlpReceiver
from tests.telemetry.test_otlp_traces import KEY, _http_check, _http_up
from tests.telemetry.test_otlp_traces import POLICY as BASE


def _policy(tracing: str, admin_public: bool = False) -> str:
    text = BASE
    if admin_public:
        text = text.replace(
            "{name: admin, path: /v1/admin, methods: [GET], providers: [keys], scopes: [admin]}",
            "{name: admin, path: /v1/admin, methods: [GET], public: true}",
        )
    return text + f"telemetry:\n  tracing: {tracing}\n"


AT = {"source": "p.yaml", "base_dir": Path(".")}


def test_the_section_loads_and_is_checked_with_its_location() -> None:
    config = load_policy_bytes(_policy("{sampling: 0.25, parent_based: false}").encode(), **AT)
    assert config.tracing == TracingConfig(enabled=True, sampling=0.25, parent_based=False)
    assert load_policy_bytes(BASE.encode(), **AT).tracing is None
    with pytest.raises(PolicyError) as caught:
        load_policy_bytes(_policy("{sampling: 2}").encode(), **AT)
    ((where, message),) = caught.value.problems
    assert where.startswith("p.yaml:") and "telemetry.tracing.sampling" in message
    with pytest.raises(PolicyError) as caught:
        load_policy_bytes(_policy("{ratio: 0.5}").encode(), **AT)
    assert "ratio" in caught.value.problems[0][1]


def test_the_policy_replaces_the_command_line_and_needs_a_collector() -> None:
    on = Telemetry(
        TelemetryOptions(otlp_endpoint="http://127.0.0.1:9", tracing=True, trace_ratio=0.5),
        Shared(),
    )
    try:
        assert on.tracer_for(None).ratio == 0.5  # no section: the command line's
        policy = on.tracer_for(TracingConfig(sampling=0.01, parent_based=False))
        assert (policy.ratio, policy.parent_based) == (0.01, False)
        assert on.tracer_for(TracingConfig(enabled=False)) is None  # off, whatever --tracing
        assert on.tracer_for(TracingConfig(sampling=0.01, parent_based=False)) is policy
    finally:
        if on._processor is not None:
            on._processor.shutdown()
    nowhere = Telemetry(TelemetryOptions(), Shared())
    assert nowhere.tracer_for(None) is None
    assert nowhere.tracer_for(TracingConfig()) is None  # no --otlp-endpoint: logged, no spans


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_reload_changes_the_sampling_without_a_restart(tmp_path: Path) -> None:
    from authz.demo.stack import free_port

    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy("{sampling: 1}"))  # parent-based: an unsampled parent wins
    http_port = free_port()

    def unsampled() -> dict[str, str]:
        return {"x-api-key": KEY, "traceparent": f"00-{uuid.uuid4().hex}-00f067aa0ba902b7-00"}

    with OtlpReceiver() as rx:
        # no --tracing: the endpoint alone, the policy turns tracing on
        svc = ServiceProcess(
            policy, tmp_path, "--http", f"127.0.0.1:{http_port}", "--otlp-endpoint", rx.endpoint
        )
        try:
            svc.wait_serving()
            wait_for(lambda: _http_up(http_port))
            sampled = f"00-{uuid.uuid4().hex}-00f067aa0ba902b7-01"
            headers = {"x-api-key": KEY, "traceparent": sampled}
            assert _http_check(http_port, "/v1/orders/1", headers) == 200
            (first,) = rx.wait_spans(lambda s: len(s) >= 1)
            assert _http_check(http_port, "/v1/orders/2", unsampled()) == 200  # not traced
            # the parent's flag no longer decides: every decision is traced
            _replace(policy, _policy("{sampling: 1, parent_based: false}"))

            def traced_unsampled() -> bool:
                _http_check(http_port, "/v1/orders/3", unsampled())
                return any(
                    s.attributes["authz.policy_version"] != first.attributes["authz.policy_version"]
                    for s in rx.spans
                )

            wait_for(traced_unsampled, timeout=30, interval=0.3)
            # off: the admin route turns public in the same change, which shows it serves
            _replace(policy, _policy("{enabled: false}", admin_public=True))
            wait_for(lambda: _http_check(http_port, "/v1/admin", {}) == 200, timeout=30)
            assert _http_check(http_port, "/v1/orders/4", headers) == 200
        finally:
            assert svc.stop() == 0  # flushes the span processor
        versions = {s.attributes["authz.policy_version"] for s in rx.spans}
    assert len(versions) == 2  # nothing from the third policy (the stop flushed all)
    orders = [s for s in rx.spans if s.attributes["authz.route"] == "get-order"]
    assert orders and all(s.parent_span_id == "00f067aa0ba902b7" for s in orders)
