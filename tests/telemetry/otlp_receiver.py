"""A small real OTLP gRPC receiver for tests: the collector's TraceService,
MetricsService and LogsService (from the OpenTelemetry proto definitions, package opentelemetry-proto),
keeping what it receives in memory."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class ReceivedSpan:
    """One span as received: ids in hex, attributes as a plain dict, the service name."""

    def __init__(self, span: Any, service: str) -> None:
        self.service = service
        self.name: str = span.name
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_span_id = span.parent_span_id.hex()
        self.kind: int = span.kind
        self.attributes = {a.key: _value(a.value) for a in span.attributes}
        self.events = [
            (e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events
        ]

    def __repr__(self) -> str:
        return f"<span {self.service}/{self.name} {self.trace_id}/{self.span_id}<-{self.parent_span_id}>"


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _service(resource: Any) -> str:
    for a in resource.attributes:
        if a.key == "service.name":
            return str(_value(a.value))
    return ""


class OtlpReceiver(
    trace_service_pb2_grpc.TraceServiceServicer,
    logs_service_pb2_grpc.LogsServiceServicer,
    metrics_service_pb2_grpc.MetricsServiceServicer,
):
    """``with OtlpReceiver() as rx:`` serves on ``rx.address`` (127.0.0.1, a free port)."""

    def __init__(self, *, keep: bool = True) -> None:
        #: keep the spans (tests), or only count them (the benchmark)
        self.keep = keep
        self.span_count = 0
        self.spans: list[ReceivedSpan] = []
        self.logs: list[dict[str, Any]] = []
        #: (service, metric name, data point attributes, value) of every number data point
        #: received (sums and gauges; a histogram's point carries its count)
        self.points: list[tuple[str, str, dict[str, Any], float]] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.endpoint = f"http://{self.address}"

    def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            with self._lock:
                for rs in request.resource_spans:
                    service = _service(rs.resource)
                    for ss in rs.scope_spans:
                        self.span_count += len(ss.spans)
                        if self.keep:
                            self.spans.extend(ReceivedSpan(s, service) for s in ss.spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
            with self._lock:
                for rm in request.resource_metrics:
                    service = _service(rm.resource)
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            self._points(service, metric)
            return metrics_service_pb2.ExportMetricsServiceResponse()
        with self._lock:
            for rl in request.resource_logs:
                service = _service(rl.resource)
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        self.logs.append(
                            {
                                "service": service,
                                "body": _value(r.body),
                                "trace_id": r.trace_id.hex(),
                                "span_id": r.span_id.hex(),
                                "attributes": {a.key: _value(a.value) for a in r.attributes},
                            }
                        )
        return logs_service_pb2.ExportLogsServiceResponse()

    def _points(self, service: str, metric: Any) -> None:
        kind = metric.WhichOneof("data")
        for point in getattr(metric, kind).data_points:
            labels = {a.key: _value(a.value) for a in point.attributes}
            if kind == "histogram":
                value = float(point.count)
            else:
                which = point.WhichOneof("value")
                value = float(getattr(point, which)) if which else 0.0
            self.points.append((service, metric.name, labels, value))

    def wait_spans(self, predicate: Any, timeout: float = 20.0) -> list[ReceivedSpan]:
        """The spans received, once ``predicate(spans)`` holds (TimeoutError else)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.05)
        raise TimeoutError(f"spans received: {self.spans}")

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)


def main() -> None:
    """``python -m tests.telemetry.otlp_receiver``: serve (counting only) until killed,
    printing the address on the first line (the benchmark's receiver in a process of
    its own, so that its CPU is not the measured process's)."""
    import signal

    with OtlpReceiver(keep=False) as rx:
        print(rx.endpoint, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    main()
