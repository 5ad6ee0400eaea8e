"""The decision log as OTLP logs (``authz serve --otlp-endpoint URL --otlp-logs``).

A :class:`~authz.record.DecisionListener`: on the request path it appends the
record to a bounded deque (O(1), no I/O). A thread of its own drains the deque every
:data:`FLUSH_INTERVAL` seconds (or at :data:`BATCH` records) into one
``ExportLogsServiceRequest`` and sends it to the collector's ``LogsService``. Each
log record's body is the decision log's JSON object (:func:`authz.record.log_fields`:
the same keys, never the request or its credentials), its attributes the bounded
fields (``authz.decision``, ``authz.reason``, ``authz.route``, ``authz.decision_id``),
its ``trace_id`` and ``span_id`` those of the propagated context (the check call's
metadata, else the request's ``traceparent``/B3: the span of Envoy's that called
authz, parent of the decision span).

When the queue is full (the collector is down or slow) a record is not queued and
``authz_otlp_logs_dropped_total`` counts it: the decision log on disk, which this
does not replace, still has it. A failed export is counted too
(``authz_otlp_logs_export_failures_total``) and its batch is not retried.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
from typing import Any

from authz.record import DecisionRecord, log_fields
from authz.telemetry.metrics import Metrics
from authz.telemetry.tracing import parent_of

log = logging.getLogger("authz.telemetry.otlp_logs")

#: records waiting for export at most (past it: dropped, counted)
MAX_QUEUE = 8192
#: records per export request at most
BATCH = 512
FLUSH_INTERVAL = 1.0
EXPORT_TIMEOUT = 5.0
#: OTLP severity numbers: INFO for an allow, WARN for a deny or a monitored deny
SEVERITY = {"allow": (9, "INFO"), "deny": (13, "WARN"), "monitor": (13, "WARN")}


def _rfc3339(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat()


class OtlpDecisionLogs:
    """Sends decision records to an OTLP gRPC collector as log records."""

    def __init__(self, endpoint: str, service_name: str, metrics: Metrics) -> None:
        self.endpoint = endpoint
        self.service_name = service_name
        self._queue: collections.deque[DecisionRecord] = collections.deque()
        self._dropped = metrics.counter(
            "authz_otlp_logs_dropped_total",
            "decision records not sent as OTLP logs: the export queue was full",
        ).labels()
        self._failures = metrics.counter(
            "authz_otlp_logs_export_failures_total", "OTLP log export requests that failed"
        ).labels()
        self._sent = metrics.counter(
            "authz_otlp_logs_sent_total", "decision records sent as OTLP logs"
        ).labels()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def on_decision(self, record: DecisionRecord) -> None:
        queue = self._queue
        if len(queue) >= MAX_QUEUE:
            self._dropped.inc()
            return
        queue.append(record)
        if len(queue) >= BATCH:
            self._wake.set()

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="otlp-logs", daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        import asyncio

        self._stop = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, EXPORT_TIMEOUT * 2)

    # -- the export thread ---------------------------------------------------------------

    def _run(self) -> None:
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

        target = self.endpoint.split("://", 1)[1]
        if self.endpoint.startswith("https://"):
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            channel = grpc.insecure_channel(target)
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            while True:
                self._wake.wait(FLUSH_INTERVAL)
                self._wake.clear()
                self._drain(stub)
                if self._stop:
                    self._drain(stub)
                    return
        finally:
            channel.close()

    def _drain(self, stub: Any) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(BATCH, len(queue)))]
            try:
                stub.Export(self._request(batch), timeout=EXPORT_TIMEOUT)
            except Exception as exc:
                self._failures.inc()
                log.warning("OTLP log export of %d records failed: %s", len(batch), exc)
                continue
            self._sent.inc(len(batch))

    def _request(self, batch: list[DecisionRecord]) -> Any:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.logs.v1 import logs_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2

        def value(v: Any) -> Any:
            if isinstance(v, bool):
                return common_pb2.AnyValue(bool_value=v)
            if isinstance(v, int):
                return common_pb2.AnyValue(int_value=v)
            if isinstance(v, float):
                return common_pb2.AnyValue(double_value=v)
            return common_pb2.AnyValue(string_value=str(v))

        def kv(key: str, v: Any) -> Any:
            return common_pb2.KeyValue(key=key, value=value(v))

        records = []
        for record in batch:
            fields = log_fields(record, _rfc3339)
            severity, text = SEVERITY.get(record.decision, (9, "INFO"))
            request = record.request
            headers = getattr(request, "trace", None) or getattr(request, "headers", None) or {}
            parent = parent_of(headers)
            stamp = int(record.time * 1e9)
            records.append(
                logs_pb2.LogRecord(
                    time_unix_nano=stamp,
                    observed_time_unix_nano=stamp,
                    severity_number=severity,  # type: ignore[arg-type]
                    severity_text=text,
                    event_name="authz.decision",
                    body=common_pb2.AnyValue(
                        kvlist_value=common_pb2.KeyValueList(
                            values=[kv(k, v) for k, v in fields.items()]
                        )
                    ),
                    attributes=[
                        kv("authz.decision", record.decision),
                        kv("authz.reason", record.reason),
                        kv("authz.route", record.route),
                        kv("authz.decision_id", record.decision_id),
                    ],
                    trace_id=parent.trace_id.to_bytes(16, "big") if parent else b"",
                    span_id=parent.span_id.to_bytes(8, "big") if parent else b"",
                    flags=1 if parent is not None and parent.sampled else 0,
                )
            )
        resource = resource_pb2.Resource(attributes=[kv("service.name", self.service_name)])
        return logs_service_pb2.ExportLogsServiceRequest(
            resource_logs=[
                logs_pb2.ResourceLogs(
                    resource=resource,
                    scope_logs=[
                        logs_pb2.ScopeLogs(
                            scope=common_pb2.InstrumentationScope(name="authz"),
                            log_records=records,
                        )
                    ],
                )
            ]
        )
