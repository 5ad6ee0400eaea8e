"""Decision metrics: a :class:`~authz.record.DecisionListener` that observes every
decision's latency by decision and shows the policy version serving.

Only when telemetry is on (``--metrics`` or ``--otlp-metrics``). The counts by route,
decision and reason (``authz_decisions_total``) are the engine's own, always there;
this adds the latency and the version. The labels are bounded: the decision is
allow | deny | monitor, the version one label value at a time set to 1 (the earlier
ones 0).

Per decision: one dict lookup of a bound ``observe`` and one histogram observation.
"""

from __future__ import annotations

from authz.record import DecisionRecord
from authz.telemetry.metrics import Metrics

#: the decision's latency in milliseconds (the service's own time, Envoy's not included)
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)


class DecisionMetrics:
    """Observes decisions' latency by decision, and the policy version serving."""

    def __init__(self, metrics: Metrics) -> None:
        latency = metrics.histogram(
            "authz_decision_latency_ms",
            "time the service took to decide, by decision (ms)",
            ("decision",),
            LATENCY_BUCKETS,
        )
        self._latency = {d: latency.labels(d).observe for d in ("allow", "deny", "monitor")}
        self._info = metrics.gauge(
            "authz_policy_info",
            "1 for the policy version serving (0: an earlier one)",
            ("version",),
        )
        self._version = ""

    def set_version(self, version: str) -> None:
        """The policy version now serving (called at start and seen in records)."""
        if version == self._version:
            return
        if self._version:
            self._info.labels(self._version).set(0)
        self._info.labels(version).set(1)
        self._version = version

    def on_decision(self, record: DecisionRecord) -> None:
        observe = self._latency.get(record.decision)
        if observe is not None:
            observe(record.latency_ms)
        if record.policy_version != self._version:
            self.set_version(record.policy_version)
