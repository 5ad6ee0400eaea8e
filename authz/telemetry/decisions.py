"""Decision metrics: a :class:`~authz.record.DecisionListener` that counts every
decision by route, decision and reason, observes its latency, and shows the policy
version serving.

Only when telemetry is on (``--metrics`` or ``--otlp-metrics``): the engine's own
counters (by reason, by outcome) are always there; these add the route and the
latency. The labels are bounded: the route is a route *name* of the policy (""
when none matched: an undeclared request's path never becomes a label), the reason
a code of the registry, the decision allow | deny | monitor; a family past its
bound folds into ``_other`` (:mod:`authz.telemetry.metrics`).

Per decision: one dict lookup of a bound ``inc`` by (route, decision, reason) and
one histogram observation.
"""

from __future__ import annotations

from collections.abc import Callable

from authz.record import DecisionRecord
from authz.telemetry.metrics import Metrics

#: route x decision x reason combinations kept (a policy of 100 routes and ~10 reasons
#: a route seen fits)
MAX_ROUTE_SERIES = 2048
#: the decision's latency in milliseconds (the service's own time, Envoy's not included)
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)


class DecisionMetrics:
    """Counts decisions by (route, decision, reason) and their latency by decision."""

    def __init__(self, metrics: Metrics) -> None:
        self._family = metrics.counter(
            "authz_route_decisions_total",
            "decisions by route name, decision (allow|deny|monitor) and reason code",
            ("route", "decision", "reason"),
            max_series=MAX_ROUTE_SERIES,
        )
        self._incs: dict[tuple[str, str, str], Callable[[], None]] = {}
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
        key = (record.route, record.decision, record.reason)
        inc = self._incs.get(key)
        if inc is None:
            inc = self._family.labels(*key).inc
            if len(self._incs) < MAX_ROUTE_SERIES:
                self._incs[key] = inc
        inc()
        observe = self._latency.get(record.decision)
        if observe is not None:
            observe(record.latency_ms)
        if record.policy_version != self._version:
            self.set_version(record.policy_version)
