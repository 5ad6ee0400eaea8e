"""The metrics seam over OTLP (``authz serve --otlp-endpoint URL --otlp-metrics``).

Every ``--otlp-metrics-interval`` seconds (and once more at a stop) a thread of its
own reads this process's metrics (the same series ``GET /metrics`` serves:
:func:`authz.control.servicer.counters_to_proto`) and sends them to the collector's
``MetricsService`` as one ``ExportMetricsServiceRequest``: counters as monotonic
cumulative sums, gauges as gauges, histograms as cumulative explicit-bucket
histograms (the seam's buckets are already per bucket, the last one +Inf, as OTLP
wants them). Nothing here runs on the request path: the counters are the ones the
engine already keeps.

The resource carries ``service.name`` and ``service.instance.id`` (host and pid), so
that the workers of ``--workers N``, each exporting its own series, stay apart in the
collector (a sum over instances is the service's). A failed export is counted in
``authz_otlp_metrics_export_failures_total`` and logged; the next one carries the
cumulative values again, so nothing is lost but resolution.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from authz.telemetry.metrics import Metrics

log = logging.getLogger("authz.telemetry.otlp_metrics")

EXPORT_TIMEOUT = 5.0
#: OTLP's AggregationTemporality CUMULATIVE
CUMULATIVE = 2


class OtlpMetrics:
    """Sends the process's metrics to an OTLP gRPC collector, periodically."""

    def __init__(self, endpoint: str, service_name: str, metrics: Metrics, interval: float) -> None:
        self.endpoint = endpoint
        self.service_name = service_name
        self.interval = interval
        self._metrics = metrics
        self._failures = metrics.counter(
            "authz_otlp_metrics_export_failures_total", "OTLP metric export requests that failed"
        ).labels()
        self._started = time.time_ns()
        self._instance = f"{socket.gethostname()}-{os.getpid()}"
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.exports = 0

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="otlp-metrics", daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        import asyncio

        self._stop = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, EXPORT_TIMEOUT * 2)

    def _run(self) -> None:
        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

        target = self.endpoint.split("://", 1)[1]
        if self.endpoint.startswith("https://"):
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            channel = grpc.insecure_channel(target)
        stub = metrics_service_pb2_grpc.MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            while True:
                self._wake.wait(self.interval)
                self._export(stub)  # at a stop too: the last values
                if self._stop:
                    return
        finally:
            channel.close()

    def _export(self, stub: Any) -> None:
        try:
            stub.Export(self.request(), timeout=EXPORT_TIMEOUT)
        except Exception as exc:
            self._failures.inc()
            log.warning("OTLP metric export failed: %s", exc)
            return
        self.exports += 1

    def request(self) -> Any:
        """One ``ExportMetricsServiceRequest`` of every series, as they are now."""
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.metrics.v1 import metrics_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2

        from authz.control.servicer import counters_to_proto
        from authz.telemetry.prometheus import descriptions_of

        def kv(key: str, value: str) -> Any:
            return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))

        now = time.time_ns()
        helps = descriptions_of(self._metrics)
        by_name: dict[str, Any] = {}
        for s in counters_to_proto(self._metrics).series:
            metric = by_name.get(s.name)
            if metric is None:
                metric = by_name[s.name] = metrics_pb2.Metric(
                    name=s.name, description=helps.get(s.name, "")
                )
                if s.kind == "counter":
                    metric.sum.aggregation_temporality = CUMULATIVE  # type: ignore[assignment]
                    metric.sum.is_monotonic = True
                elif s.kind == "histogram":
                    metric.histogram.aggregation_temporality = CUMULATIVE  # type: ignore[assignment]
                else:
                    metric.gauge.SetInParent()
            attributes = [kv(h.name, h.value) for h in s.labels]
            if s.kind == "histogram":
                metric.histogram.data_points.add(
                    attributes=attributes, start_time_unix_nano=self._started,
                    time_unix_nano=now, count=s.count, sum=s.sum,
                    explicit_bounds=list(s.bounds), bucket_counts=list(s.bucket_counts),
                )  # fmt: skip
            else:
                points = metric.sum.data_points if s.kind == "counter" else metric.gauge.data_points
                points.add(
                    attributes=attributes, start_time_unix_nano=self._started,
                    time_unix_nano=now, as_double=s.value,
                )  # fmt: skip
        resource = resource_pb2.Resource(
            attributes=[kv("service.name", self.service_name),
                        kv("service.instance.id", self._instance)]
        )  # fmt: skip
        return metrics_service_pb2.ExportMetricsServiceRequest(
            resource_metrics=[
                metrics_pb2.ResourceMetrics(
                    resource=resource,
                    scope_metrics=[
                        metrics_pb2.ScopeMetrics(
                            scope=common_pb2.InstrumentationScope(name="authz"),
                            metrics=list(by_name.values()),
                        )
                    ],
                )
            ]
        )
