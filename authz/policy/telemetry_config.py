"""The ``telemetry`` section of a policy file: tracing set by the policy.

Policy is code: sampling is a policy decision an operator changes, tests and rolls
back like any other, and a reload applies it without a restart. Where spans go (the
collector) stays on ``authz serve``'s command line (``--otlp-endpoint``): it is the
deployment's, not the policy's. A ``telemetry.tracing`` section replaces the
command line's ``--tracing``, ``--trace-sampling`` and ``--no-trace-parent-based``
while that policy serves; without one, the command line decides.

The JSON Schema has already checked the types and the sampling's range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TracingConfig:
    enabled: bool = True
    #: head sampling: the share of new traces (no parent) that are recorded
    sampling: float = 1.0
    #: a parent's sampled flag decides (W3C ``traceparent`` / B3 from Envoy)
    parent_based: bool = True


def load_tracing(doc: dict[str, Any]) -> TracingConfig | None:
    """The policy's ``telemetry.tracing`` (None: the section is absent)."""
    section = doc.get("telemetry")
    if not isinstance(section, dict) or not isinstance(section.get("tracing"), dict):
        return None
    spec = section["tracing"]
    return TracingConfig(
        enabled=bool(spec.get("enabled", True)),
        sampling=float(spec.get("sampling", 1.0)),
        parent_based=bool(spec.get("parent_based", True)),
    )
