"""Decisions counted by the route's data class: ``authz_class_decisions_total``.

Labels ``data_class`` (one of :data:`~authz.policy.classification.CLASSES`, or ``""``
when no route was known: undeclared, invalid path, request-phase denials) and
``decision`` (allow, deny, monitor). Every pair is bound once, when the engine is
built: a fixed set of 18 series, whatever the traffic, and one dict lookup and one
call per decision.
"""

from __future__ import annotations

from collections.abc import Callable

from authz.policy.classification import CLASSES
from authz.telemetry.metrics import Metrics

OUTCOMES = ("allow", "deny", "monitor")
NAME = "authz_class_decisions_total"


def class_counters(metrics: Metrics) -> dict[tuple[str, str], Callable[[], None]]:
    """(outcome, data class) -> the bound ``inc`` of its series."""
    family = metrics.counter(
        NAME,
        "decisions by outcome and the route's data class ('': no route)",
        ("data_class", "decision"),
        max_series=32,  # 18 used: never folded into _other
    )
    return {(o, c): family.labels(c, o).inc for o in OUTCOMES for c in ("", *CLASSES)}


def no_count() -> None:
    """For a class no loaded route has (a RouteConfig built by hand): not counted."""
