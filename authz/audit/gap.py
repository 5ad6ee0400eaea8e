"""Gap records: what the audit trail could not keep, written into the trail itself.

A record the writer has no room for (its queue full, or writes failing) is refused:
an allow is denied ``audit_unavailable`` and the record is counted
(``authz_audit_refused_total``). So that the trail itself says something is missing,
the refusals are tallied here (on the request path: a lock and a few counters, only
while the queue is full) and, once the writer has room again, it writes one ``gap``
line into the chain, hashed and sealed like any record::

    {"kind": "gap", "refused": 12, "first": <unix time>, "last": <unix time>,
     "first_at": "...", "last_at": "...", "reasons": {"audit_unavailable": 9, ...},
     "time": <when written>, "at": "...", "seq": ..., "prev": "..."}

``reasons`` counts the refused records by their reason code (control-plane calls as
``control:<method>``), at most :data:`MAX_REASONS` of them, the rest as ``<other>``.
``authz audit verify`` reports every gap (not as tampering: the chain is intact, and
it says what it lacks) and exits 3 when a trail is intact but has gaps.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from authz.audit.entry import rfc3339

#: distinct reasons counted in one gap record
MAX_REASONS = 32
OTHER = "<other>"


def _reason(item: Any) -> str:
    if isinstance(item, tuple) and item:
        return str(getattr(item[0], "reason", "") or "")
    if isinstance(item, dict):
        return f"control:{item.get('method', '')}"
    return ""


class GapTally:
    """Refusals since the last gap record (the request path adds, the writer takes)."""

    __slots__ = ("_first", "_last", "_lock", "_reasons", "_refused")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refused = 0
        self._first = 0.0
        self._last = 0.0
        self._reasons: dict[str, int] = {}

    def refuse(self, item: Any, when: float) -> None:
        reason = _reason(item)
        with self._lock:
            if not self._refused:
                self._first = when
            self._refused += 1
            self._last = when
            reasons = self._reasons
            if reason in reasons:
                reasons[reason] += 1
            elif len(reasons) < MAX_REASONS:
                reasons[reason] = 1
            else:
                reasons[OTHER] = reasons.get(OTHER, 0) + 1

    @property
    def pending(self) -> int:
        return self._refused

    def take(self) -> dict[str, Any] | None:
        """The gap entry for the refusals so far (and start again), or None."""
        if not self._refused:  # a plain read: the common case takes no lock
            return None
        with self._lock:
            now = time.time()
            entry = {
                "kind": "gap", "time": now, "at": rfc3339(now), "refused": self._refused,
                "first": self._first, "last": self._last, "first_at": rfc3339(self._first),
                "last_at": rfc3339(self._last), "reasons": dict(self._reasons),
            }  # fmt: skip
            self._refused = 0
            self._reasons = {}
        return entry
