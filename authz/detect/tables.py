"""Bounded tables: every piece of per-caller, per-token and per-route state lives in one.

A :class:`LruTable` holds at most ``capacity`` entries; getting an entry makes it the
most recently used, and adding one to a full table evicts the least recently used,
counted in ``authz_detect_evicted_total{table}`` through the process's metrics. A
flood of fresh identities therefore churns the table without growing it
(``bench/detect_flood.py`` shows the RSS). A caller evicted and seen again starts
from a fresh entry: its baseline is relearned, which errs on the side of no action
(a fresh entry's baseline is seeded from its route's population).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from authz.telemetry.metrics import Counter, Metrics, report_table

V = TypeVar("V")


class LruTable(Generic[V]):
    """At most ``capacity`` entries, least recently used evicted first."""

    __slots__ = ("_entries", "_evicted", "bump", "capacity", "name", "peek")

    def __init__(self, name: str, capacity: int, metrics: Metrics) -> None:
        if capacity < 1:
            raise ValueError("a table holds at least one entry")
        self.name = name
        self.capacity = capacity
        self._entries: OrderedDict[str, V] = OrderedDict()
        #: the entry without touching its recency (None if absent); the hot callers
        #: ``peek`` and then ``bump`` (make it most recent) or :meth:`add`: two calls
        #: straight into the dictionary, no Python frame
        self.peek: Callable[[str], V | None] = self._entries.get
        self.bump: Callable[[str], None] = self._entries.move_to_end
        self._evicted: Counter = metrics.counter(
            "authz_detect_evicted_total",
            "detection table entries evicted (table full, least recently used)",
            ("table",),
        ).labels(name)
        # its size against its bound, read when the metrics are (in the scoring child:
        # sent back with its other gauges, so the serving process's /metrics shows it)
        report_table(metrics, f"detect_{name}", self.__len__, lambda: self.capacity)

    def get(self, key: str, factory: Callable[[], V]) -> V:
        """The entry for ``key`` (made by ``factory`` if absent), now most recent."""
        entries = self._entries
        found = entries.get(key)
        if found is not None:
            entries.move_to_end(key)
            return found
        if len(entries) >= self.capacity:
            entries.popitem(last=False)
            self._evicted.inc()
        made = entries[key] = factory()
        return made

    def touch(self, key: str) -> V | None:
        """The entry for ``key``, now most recent (None if absent: :meth:`add` it).

        ``touch`` then ``add`` is :meth:`get` without a factory closure per call."""
        entries = self._entries
        found = entries.get(key)
        if found is not None:
            entries.move_to_end(key)
        return found

    def add(self, key: str, value: V) -> V:
        """Add ``value`` for an absent ``key`` (evicting the least recent if full)."""
        entries = self._entries
        if len(entries) >= self.capacity:
            entries.popitem(last=False)
            self._evicted.inc()
        entries[key] = value
        return value

    def put(self, key: str, value: V) -> None:
        """Set ``key`` to ``value``, now most recent (evicting the least recent if full)."""
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
        elif len(entries) >= self.capacity:
            entries.popitem(last=False)
            self._evicted.inc()
        entries[key] = value

    def resize(self, capacity: int) -> None:
        """A new bound (a reload); a smaller one evicts the least recent now."""
        self.capacity = max(1, capacity)
        entries = self._entries
        while len(entries) > self.capacity:
            entries.popitem(last=False)
            self._evicted.inc()

    def pop(self, key: str) -> V | None:
        """Take the entry out (None if absent)."""
        return self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(list(self._entries.items()))
