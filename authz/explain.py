"""Explain: one request run stage by stage, with what each stage did.

:meth:`authz.engine.PolicyEngine.explain` runs the same stages as ``check`` in a
loop of its own (so ``check`` pays nothing for it) and returns the decision with
one :class:`Step` per registered stage, in run order. An explained request is
decided as a dry run: it writes no decision record, the ``observe`` stages do not
see it (no inventory entry), it is not counted in the decision or undeclared
counters, and a rate limit that admits it gives the charge back at once (the
verdict is the one the request would get now; a concurrent request may see the
momentary charge) and counts nothing. It does run for real what a real request
would: JWKS may be fetched, the token cache filled, load shedding sees it in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: ``pass``: the stage ran and let the request go on; ``deny``: it raised (its
#: ``reason``; a monitored route lets it through all the same); ``abstain``: the
#: stage has nothing to do here (not configured on this route, or a public route's
#: identity); ``skipped``: not reached (an earlier stage denied, or ``observe``).
Outcome = Literal["pass", "deny", "abstain", "skipped"]


@dataclass(frozen=True, slots=True)
class Step:
    """What one stage did to the explained request."""

    name: str
    phase: str
    outcome: Outcome
    #: the reason code of a deny, else ""
    reason: str = ""
    #: the policy element that decided: route name, provider, rule, schema location
    element: str = ""
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "phase": self.phase,
            "outcome": self.outcome,
            "reason": self.reason,
            "element": self.element,
            "duration_ms": round(self.duration_ms, 3),
        }


def render(steps: tuple[Step, ...]) -> str:
    """The trace as aligned text, one stage a line."""
    lines = []
    for s in steps:
        timing = f"{s.duration_ms * 1000:8.1f} µs" if s.outcome in ("pass", "deny") else " " * 11
        what = f"{s.outcome} {s.reason}".strip()
        element = f"  [{s.element}]" if s.element else ""
        lines.append(f"{s.phase:<10} {s.name:<15} {timing}  {what}{element}")
    return "\n".join(lines)
