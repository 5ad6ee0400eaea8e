"""The metrics seam: counters, histograms and gauges with bounded label sets.

A component asks a :class:`Metrics` for a family once, at build time, and binds
the label values it will use to a handle (``family.labels("allowed")``); the
request path then calls ``handle.inc()``: one method call, no dict of labels built
per request. A family holds at most ``max_series`` label combinations; past that,
new combinations fold into one series whose every label is ``"_other"``, so a
label fed from request data cannot grow memory without bound.

:class:`NoopMetrics` drops everything; :class:`MemoryMetrics` keeps the values in
process (tests, ``authz`` inspection, and the source a later exporter reads).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

#: Label value of the series that collects combinations past a family's bound.
OTHER = "_other"
DEFAULT_MAX_SERIES = 64
#: Latency buckets in milliseconds.
DEFAULT_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250)


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Histogram(Protocol):
    def observe(self, value: float) -> None: ...

    def observe_weighted(self, value: float, weight: int) -> None:
        """``weight`` observations of ``value`` (one sampled call standing for many)."""


class Gauge(Protocol):
    def set(self, value: float) -> None: ...

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


H = TypeVar("H", covariant=True)


class Family(Protocol[H]):
    """One metric name; :meth:`labels` binds label values to a handle (at build time)."""

    name: str

    def labels(self, *values: str) -> H: ...


class Metrics(Protocol):
    """Where components register their metrics."""

    def counter(
        self,
        name: str,
        description: str,
        labels: Sequence[str] = (),
        *,
        max_series: int | None = None,
    ) -> Family[Counter]:
        """``max_series`` overrides the default bound (a label set known to be larger)."""

    def histogram(
        self,
        name: str,
        description: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Family[Histogram]: ...

    def gauge(self, name: str, description: str, labels: Sequence[str] = ()) -> Family[Gauge]: ...


# --------------------------------------------------------------------------- no-op


class _Noop:
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        return None

    def dec(self, amount: float = 1) -> None:
        return None

    def set(self, value: float) -> None:
        return None

    def observe(self, value: float) -> None:
        return None

    def observe_weighted(self, value: float, weight: int) -> None:
        return None


_NOOP = _Noop()


class _NoopFamily:
    def __init__(self, name: str) -> None:
        self.name = name

    def labels(self, *values: str) -> _Noop:
        return _NOOP


class NoopMetrics:
    """Records nothing; every handle is one shared object whose methods return."""

    def counter(
        self,
        name: str,
        description: str,
        labels: Sequence[str] = (),
        *,
        max_series: int | None = None,
    ) -> _NoopFamily:
        return _NoopFamily(name)

    def histogram(
        self,
        name: str,
        description: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> _NoopFamily:
        return _NoopFamily(name)

    def gauge(self, name: str, description: str, labels: Sequence[str] = ()) -> _NoopFamily:
        return _NoopFamily(name)


# --------------------------------------------------------------------------- in memory


class MemoryCounter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class MemoryGauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class MemoryHistogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def observe_weighted(self, value: float, weight: int) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.count += weight
        self.sum += value * weight


S = TypeVar("S")


class MemoryFamily(Generic[S]):
    """The series of one metric, at most ``max_series`` of them (then ``_other``)."""

    def __init__(
        self,
        kind: str,
        name: str,
        description: str,
        labels: tuple[str, ...],
        make: type[S] | None,
        max_series: int,
        bounds: tuple[float, ...] = (),
    ) -> None:
        self.kind, self.name, self.description, self.label_names = kind, name, description, labels
        self._make = make
        self._bounds = bounds
        self._max = max_series
        self.series: dict[tuple[str, ...], S] = {}
        #: combinations folded into ``_other`` because the family was full
        self.folded = 0

    def _new(self) -> S:
        if self.kind == "histogram":
            return MemoryHistogram(self._bounds)  # type: ignore[return-value]
        assert self._make is not None
        return self._make()

    def labels(self, *values: str) -> S:
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name}: labels {self.label_names}, got {values!r}")
        found = self.series.get(values)
        if found is not None:
            return found
        if len(self.series) >= self._max - 1:  # keep one slot for _other
            self.folded += 1
            values = (OTHER,) * len(values)
            found = self.series.get(values)
            if found is not None:
                return found
        found = self.series[values] = self._new()
        return found


class MemoryMetrics:
    """Keeps every series in process. Asking twice for a name returns the same family
    (a reloaded policy keeps counting where the last one stopped); asking for it as
    another kind or with other labels is a programming error."""

    def __init__(self, *, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self._max = max_series
        self.families: dict[str, MemoryFamily[object]] = {}

    def _family(
        self,
        kind: str,
        name: str,
        description: str,
        labels: Sequence[str],
        make: type[object] | None,
        bounds: tuple[float, ...] = (),
        max_series: int | None = None,
    ) -> MemoryFamily[object]:
        found = self.families.get(name)
        if found is None:
            bound = max_series or self._max
            found = MemoryFamily(kind, name, description, tuple(labels), make, bound, bounds)
            self.families[name] = found
        elif found.kind != kind or found.label_names != tuple(labels):
            raise ValueError(f"metric {name} already registered as {found.kind}{found.label_names}")
        return found

    def counter(
        self,
        name: str,
        description: str,
        labels: Sequence[str] = (),
        *,
        max_series: int | None = None,
    ) -> MemoryFamily[MemoryCounter]:
        return self._family(  # type: ignore[return-value]
            "counter", name, description, labels, MemoryCounter, max_series=max_series
        )

    def gauge(
        self, name: str, description: str, labels: Sequence[str] = ()
    ) -> MemoryFamily[MemoryGauge]:
        return self._family("gauge", name, description, labels, MemoryGauge)  # type: ignore[return-value]

    def histogram(
        self,
        name: str,
        description: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> MemoryFamily[MemoryHistogram]:
        bounds = tuple(sorted(buckets))
        return self._family("histogram", name, description, labels, None, bounds)  # type: ignore[return-value]

    def value(self, name: str, *labels: str) -> float:
        """A counter's or gauge's value (0 if the series does not exist)."""
        family = self.families.get(name)
        series = family.series.get(labels) if family is not None else None
        return float(getattr(series, "value", 0.0)) if series is not None else 0.0

    def snapshot(self) -> dict[str, dict[tuple[str, ...], float]]:
        """name -> labels -> value (a histogram's count), for tests and inspection."""
        out: dict[str, dict[tuple[str, ...], float]] = {}
        for name, family in self.families.items():
            out[name] = {
                labels: float(getattr(s, "value", getattr(s, "count", 0)))
                for labels, s in family.series.items()
            }
        return out


# --------------------------------------------------------------------------- table sizes

#: tables shown by ``authz_table_entries`` (one per kind, and per JWT provider)
MAX_TABLES = 64


class ReadGauge:
    """A gauge whose value is read when the metrics are (a scrape, ``authz counters``),
    not kept up to date on the request path."""

    __slots__ = ("_read",)

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read

    @property
    def value(self) -> float:
        try:
            return float(self._read())
        except Exception:  # a table being torn down: no value, not a failed scrape
            return math.nan


def report_table(
    metrics: Metrics, table: str, size: Callable[[], float], bound: int | Callable[[], float]
) -> None:
    """Show a bounded table's size against its bound: ``authz_table_entries{table}``
    and ``authz_table_capacity{table}``, read at scrape time (``bound`` a callable
    when a reload may change it). ``table`` is a fixed name (never request data).
    Called again for the same name (a reload's new table), the new one replaces the
    old. Another Metrics than :class:`MemoryMetrics` gets a fixed capacity only."""
    capacity = metrics.gauge(
        "authz_table_capacity", "the bound of each in-process table", ("table",)
    )
    entries = metrics.gauge(
        "authz_table_entries", "entries each in-process table holds now", ("table",)
    )
    if not isinstance(entries, MemoryFamily) or not isinstance(capacity, MemoryFamily):
        if not callable(bound):
            capacity.labels(table).set(bound)
        return
    if (table,) not in entries.series and len(entries.series) >= MAX_TABLES:
        return
    entries.series[(table,)] = ReadGauge(size)
    capacity.series[(table,)] = ReadGauge(bound if callable(bound) else lambda: bound)
