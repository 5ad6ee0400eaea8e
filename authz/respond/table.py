"""The bounded table of enforcements in force: blocks, revocations, throttles, step-ups.

One :class:`Entry` per (response, target kind, target), with its expiry and where it
came from (a detector's action and its evidence, or the operator who added it).
:class:`Table` keeps them in one insertion-ordered dict (bounded: ``max_entries``;
when full, the expired go first, then the oldest, each eviction counted) and, for
the request path, one index per target kind: ``target -> (entry, ...)`` of the entries
*enforced* (monitor-mode entries are listed, never indexed). A request
matches with one dict lookup per target kind it has; an empty kind costs nothing.

Expired entries are dropped by :meth:`Table.sweep` (a heap of expiries: O(log n)
per entry, run by the enforcer about once a second) and ignored on a hit before.

Mutations take a lock (an action may be applied from a scorer's thread); lookups
do not (a dict read is atomic in CPython and an index only ever holds whole entries).
"""

from __future__ import annotations

import heapq
import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from authz.detect.events import TARGET_KINDS
from authz.telemetry.metrics import MemoryMetrics, Metrics, report_table

#: What an entry does, in the order a request is checked against them.
ENFORCED = ("revoke", "block", "step_up", "throttle")
#: The reason code a request denied by each carries (as authz.detect.events.REASON_OF).
REASONS = {
    "block": "caller_blocked",
    "revoke": "credential_revoked",
    "step_up": "step_up_required",
    "throttle": "caller_throttled",
}
#: Target kinds a revocation may name (a credential or its holder, never an address).
REVOCABLE = ("token", "subject", "api_key")
SEPARATOR = "|"


class Entry(NamedTuple):
    """One enforcement in force (or, ``monitor``, one that would be)."""

    response: str  # block | revoke | throttle | step_up
    target_kind: str  # address | prefix | subject | api_key | token
    target: str
    created: float  # unix seconds
    expires: float  # unix seconds
    source: str  # detector | operator
    #: the detector's name, or the operator the control plane authenticated
    by: str
    #: what the detector saw (features, baseline, threshold), as (name, value) pairs
    evidence: tuple[tuple[str, str], ...] = ()
    monitor: bool = False
    note: str = ""

    @property
    def key(self) -> str:
        return entry_key(self.response, self.target_kind, self.target)

    @property
    def reason(self) -> str:
        return REASONS.get(self.response, "")

    def remaining(self, now: float) -> float:
        return max(self.expires - now, 0.0)

    def describe(self, now: float | None = None) -> str:
        """For explain and logs: what, on what, by whom, for how long."""
        left = self.remaining(time.time() if now is None else now)
        mode = " (monitor)" if self.monitor else ""
        return (
            f"{self.response} {self.target_kind} {self.target} by {self.source} {self.by}"
            f"{mode}, {math.ceil(left)}s left"
        )

    def as_dict(self) -> dict[str, Any]:
        out = self._asdict()
        out["evidence"] = dict(self.evidence)
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Entry:
        data = json.loads(text)
        evidence = tuple((str(k), str(v)) for k, v in dict(data.get("evidence") or {}).items())
        return cls(
            response=str(data["response"]),
            target_kind=str(data["target_kind"]),
            target=str(data["target"]),
            created=float(data["created"]),
            expires=float(data["expires"]),
            source=str(data.get("source", "")),
            by=str(data.get("by", "")),
            evidence=evidence,
            monitor=bool(data.get("monitor", False)),
            note=str(data.get("note", "")),
        )


def entry_key(response: str, target_kind: str, target: str) -> str:
    return f"{response}{SEPARATOR}{target_kind}{SEPARATOR}{target}"


#: target -> its entries in force (a tuple: usually one; at most one per response)
Index = dict[str, tuple[Entry, ...]]


class Table:
    """The entries in force, bounded, with one lookup index per target kind."""

    def __init__(
        self,
        max_entries: int = 100_000,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        #: target kind -> target -> its entries (enforced entries only)
        self.index: dict[str, Index] = {kind: {} for kind in TARGET_KINDS}
        self._expiries: list[tuple[float, str]] = []
        self._on_change = on_change
        m = metrics if metrics is not None else MemoryMetrics()
        evicted = m.counter(
            "authz_enforcement_evicted_total",
            "enforcements dropped from the full table before their expiry (oldest first)",
            ("response",),
        )
        self._evicted = {r: evicted.labels(r) for r in ENFORCED}
        self._expired = m.counter(
            "authz_enforcement_expired_total", "enforcements dropped at their expiry"
        ).labels()
        self._gauge = m.gauge(
            "authz_enforcement_entries", "enforcements in the table", ("response",)
        )
        report_table(m, "enforcements", self.entries.__len__, max_entries)
        self.evictions = 0
        self._counts: dict[str, int] = dict.fromkeys(ENFORCED, 0)
        #: (response, target kind) -> enforced entries: what the request path may skip
        self.enforced: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def put(self, entry: Entry) -> Entry | None:
        """Add or replace ``entry`` (same response and target); returns the one it
        replaced. Expired entries are not added."""
        if entry.expires <= self.clock():
            return None
        key = entry.key
        with self._lock:
            old = self.entries.pop(key, None)
            if old is not None:
                self._unindex(old)
            elif len(self.entries) >= self.max_entries:
                self._make_room()
            self.entries[key] = entry
            self._counts[entry.response] = self._counts.get(entry.response, 0) + 1
            if not entry.monitor:
                index = self.index[entry.target_kind]
                held = index.get(entry.target, ())
                index[entry.target] = (*(e for e in held if e.response != entry.response), entry)
                kind = (entry.response, entry.target_kind)
                self.enforced[kind] = self.enforced.get(kind, 0) + 1
            heapq.heappush(self._expiries, (entry.expires, key))
            if len(self._expiries) > 2 * max(len(self.entries), 1024):
                self._rebuild_heap()
        self._changed()
        return old

    def remove(self, key: str) -> Entry | None:
        with self._lock:
            old = self.entries.pop(key, None)
            if old is not None:
                self._unindex(old)
        if old is not None:
            self._changed()
        return old

    def replace_all(self, entries: Iterable[Entry]) -> None:
        """Make the table hold exactly ``entries`` (a resync from the shared store)."""
        now = self.clock()
        live = [e for e in entries if e.expires > now]
        with self._lock:
            self.entries.clear()
            for index in self.index.values():
                index.clear()
            self._expiries.clear()
            self._counts = dict.fromkeys(ENFORCED, 0)
            self.enforced = {}
        for entry in live:
            self.put(entry)
        self._changed()

    def sweep(self) -> int:
        """Drop the entries whose expiry has passed; returns how many."""
        now = self.clock()
        dropped = 0
        with self._lock:
            heap = self._expiries
            while heap and heap[0][0] <= now:
                expires, key = heapq.heappop(heap)
                entry = self.entries.get(key)
                if entry is not None and entry.expires == expires:
                    del self.entries[key]
                    self._unindex(entry)
                    dropped += 1
        if dropped:
            self._expired.inc(dropped)
            self._changed()
        return dropped

    def values(self) -> list[Entry]:
        return list(self.entries.values())

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    # -- internals (under the lock) -------------------------------------------------

    def _unindex(self, entry: Entry) -> None:
        self._counts[entry.response] = self._counts.get(entry.response, 1) - 1
        if entry.monitor:
            return
        kind = (entry.response, entry.target_kind)
        self.enforced[kind] = self.enforced.get(kind, 1) - 1
        index = self.index[entry.target_kind]
        found = index.get(entry.target)
        if found is not None:
            rest = tuple(e for e in found if e is not entry)
            if not rest:
                del index[entry.target]
            elif len(rest) != len(found):
                index[entry.target] = rest

    def _make_room(self) -> None:
        now = self.clock()
        heap = self._expiries
        while heap and heap[0][0] <= now and len(self.entries) >= self.max_entries:
            expires, key = heapq.heappop(heap)
            entry = self.entries.get(key)
            if entry is not None and entry.expires == expires:
                del self.entries[key]
                self._unindex(entry)
                self._expired.inc()
        while len(self.entries) >= self.max_entries:
            key = next(iter(self.entries))
            entry = self.entries.pop(key)
            self._unindex(entry)
            counter = self._evicted.get(entry.response)
            if counter is not None:
                counter.inc()
            self.evictions += 1

    def _rebuild_heap(self) -> None:
        self._expiries = [(e.expires, k) for k, e in self.entries.items()]
        heapq.heapify(self._expiries)

    def _changed(self) -> None:
        for response, n in self._counts.items():
            self._gauge.labels(response).set(n)
        if self._on_change is not None:
            self._on_change()
