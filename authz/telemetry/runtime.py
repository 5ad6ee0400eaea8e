"""The telemetry of one ``authz serve`` process, as one runtime (start/aclose).

Built from :class:`~authz.telemetry.options.TelemetryOptions` by the service:

- ``--metrics``: :class:`~authz.telemetry.scrape.MetricsEndpoint` over this
  process's metrics (a worker of ``--workers N`` has none: the supervisor serves
  the merged metrics, :mod:`authz.control.workers`);
- ``--metrics`` or ``--otlp-metrics``: the decision metrics listener
  (:mod:`authz.telemetry.decisions`) and the per-stage latency probe;
- ``--otlp-metrics``: the seam's values exported over OTLP (:mod:`authz.telemetry.otlp_metrics`);
- ``--tracing``, or the policy's ``telemetry.tracing``: spans per decision
  (:mod:`authz.telemetry.tracing`), the sampling following the serving policy;
- ``--otlp-logs``: the decision records as OTLP logs (:mod:`authz.telemetry.otlp_logs`).

With every option off, nothing is built: no listener, no probe, no import of
OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from authz.policy.telemetry_config import TracingConfig
from authz.telemetry.decisions import DecisionMetrics
from authz.telemetry.options import TelemetryOptions, read_token
from authz.telemetry.prometheus import descriptions_of, render
from authz.telemetry.scrape import MetricsEndpoint
from authz.telemetry.stages import StageLatency

if TYPE_CHECKING:
    from authz.engine import PolicyEngine
    from authz.record import DecisionListener
    from authz.stages import Shared

log = logging.getLogger("authz.telemetry")


def local_source(metrics: object) -> Any:
    """What ``GET /metrics`` serves for one process: its metrics, rendered."""
    from authz.control.servicer import counters_to_proto

    async def source() -> str:
        return render(counters_to_proto(metrics), descriptions_of(metrics))

    return source


class Telemetry:
    """The exports of one process (see the module doc)."""

    def __init__(self, options: TelemetryOptions, shared: Shared) -> None:
        self.options = options
        self._shared = shared
        metrics = shared.metrics
        self.endpoint: MetricsEndpoint | None = None
        if options.metrics is not None:
            token = read_token(options.metrics_token_file) if options.metrics_token_file else None
            self.endpoint = MetricsEndpoint(options.metrics, local_source(metrics), token=token)
        self.decisions = DecisionMetrics(metrics) if options.counting else None
        if options.counting:  # every policy built from now on times its stages
            shared.step_probe = StageLatency(metrics).wrap
        self._parts: list[Any] = []  # started in order, closed in reverse
        #: the command line's tracing, what a policy without ``telemetry.tracing`` gets
        self._cli = TracingConfig(
            enabled=options.tracing,
            sampling=options.trace_ratio,
            parent_based=options.trace_parent_based,
        )
        self.tracer: Any = None  # the serving policy's DecisionTracer (None: no spans)
        self._tracers: dict[tuple[float, bool], Any] = {}
        self._processor: Any = None  # built with the first tracer, kept for the process
        self._warned = False
        if options.tracing:
            self.tracer = self.tracer_for(None)

        self.otlp_metrics: Any = None  # an OtlpMetrics (--otlp-metrics)
        if options.otlp_metrics:
            from authz.telemetry.otlp_metrics import OtlpMetrics

            assert options.otlp_endpoint is not None  # options.check()
            self.otlp_metrics = OtlpMetrics(
                options.otlp_endpoint, options.service_name, metrics,
                options.otlp_metrics_interval,
            )  # fmt: skip

        self.otlp_logs: Any = None  # an OtlpDecisionLogs (--otlp-logs)
        if options.otlp_logs:
            from authz.telemetry.otlp_logs import OtlpDecisionLogs

            assert options.otlp_endpoint is not None  # options.check()
            self.otlp_logs = OtlpDecisionLogs(
                options.otlp_endpoint, options.service_name, shared.metrics
            )

    @property
    def listeners(self) -> tuple[DecisionListener, ...]:
        """What the engine hands every decision record to."""
        found = (self.decisions, self.otlp_logs)
        return tuple(x for x in found if x is not None)

    def attach(self, engine: PolicyEngine) -> None:
        """Called once the engine exists: the policy version serving."""
        if self.decisions is not None:
            self.decisions.set_version(engine.policy.version)
        self.policy_changed(engine)

    def policy_changed(self, engine: PolicyEngine) -> None:
        """The engine serves another policy (start, reload, rollback): its
        ``telemetry.tracing`` (or the command line's) decides the spans from now on."""
        self.tracer = engine.tracer = self.tracer_for(engine.policy.config.tracing)

    def tracer_for(self, config: TracingConfig | None) -> Any:
        """The DecisionTracer for a policy's tracing section (None: the command line's);
        None when tracing is off, or on without a collector to send to (logged once)."""
        wanted = config if config is not None else self._cli
        if not wanted.enabled:
            return None
        endpoint = self.options.otlp_endpoint
        if endpoint is None:
            if not self._warned:
                log.warning(
                    "the policy enables tracing (telemetry.tracing) but authz serve has no "
                    "--otlp-endpoint: no spans are recorded"
                )
                self._warned = True
            return None
        key = (wanted.sampling, wanted.parent_based)
        tracer = self._tracers.get(key)
        if tracer is None:
            from authz.telemetry.tracing import DecisionTracer, build_processor

            if self._processor is None:
                self._processor = build_processor(endpoint)
            if len(self._tracers) >= 16:  # a policy history's worth; built again if needed
                self._tracers.clear()
            tracer = self._tracers[key] = DecisionTracer(
                self._processor,
                ratio=wanted.sampling,
                parent_based=wanted.parent_based,
                service_name=self.options.service_name,
            )
        return tracer

    async def start(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.start()
            self._parts.append(self.endpoint)
        if self.otlp_logs is not None:
            await self.otlp_logs.start()
            self._parts.append(self.otlp_logs)
        if self.otlp_metrics is not None:  # closed first: its last export sees the rest
            await self.otlp_metrics.start()
            self._parts.append(self.otlp_metrics)

    async def aclose(self) -> None:
        while self._parts:
            part = self._parts.pop()
            try:
                await part.aclose()
            except Exception:
                log.exception("telemetry: %s did not close", type(part).__name__)
        if self._processor is not None:
            processor, self._processor = self._processor, None
            try:  # flushes the batch processor (its thread blocks on the export)
                await asyncio.to_thread(processor.shutdown)
            except Exception:
                log.exception("telemetry: the span processor did not shut down")
