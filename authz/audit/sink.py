"""Decision log sinks.

A sink takes one record (a flat dict of JSON values) per decision. ``emit`` is
on the request path, so the JSON sink only compares the queue's length with its
bound and appends the record (no lock, no wake-up: ~0.1 µs); a writer thread wakes
every ``interval`` seconds, serialises everything queued and writes it in batches,
off the event loop. Waking the writer for each record instead cost ~30 µs of CPU
per decision (thread switches and GIL hand-offs, measured under load).

Failure handling (the policy's ``decision_log`` section configures it):

- **Bounded.** At most ``max_queue`` records are held, counting the batch being
  written. When the queue is full, ``emit`` wakes the writer and waits up to
  ``block_ms`` for room, once per overflow episode (a wait per record would stall the
  event loop for every request); after that, records are counted and dropped until
  the writer has drained the queue to half, with one log line every few seconds
  saying how many were dropped since the last one.
- **Never a partial line.** Each batch is whole lines. When a write to a regular file
  fails part-way (ENOSPC, EFBIG, EIO), the bytes it did write are truncated away
  (the file ends at the last complete line); on a pipe or terminal, which cannot be
  rewound, the retry resumes at the first unwritten byte, so the line is completed,
  never duplicated. A failed batch stays queued and is retried every
  ``RETRY_INTERVAL``; its records count toward ``max_queue``. One log line when
  writes start failing, one when they succeed again; no traceback.
- **Accounted.** ``stats()`` gives emitted, written, dropped, write failures, the
  queue depth and its high-water mark; ``close`` logs a summary line. Records still
  unwritten at close (the disk never recovered, the reader never read) count as
  dropped, so ``written + dropped == emitted`` once closed.
- **Counted in the metrics** (``authz_decision_log_*``, see :class:`JsonLinesSink`):
  each series is written by one thread only (emit's, or the writer's), so no lock.
- **A runtime** (:mod:`authz.runtime`): constructing the sink opens its file but
  starts nothing; :meth:`JsonLinesSink.start` (or ``open`` outside an event loop)
  starts the writer thread, ``aclose`` (or ``close``) drains it and joins it.
- **Health.** ``healthy()`` is False while writes fail, while the queue overflows, or
  while one write has been blocked for more than ``stall_after`` seconds (a stdout
  pipe nobody reads). ``ready()`` is the engine's per-decision question for
  ``on_failure: deny``: can a record be taken now? It is a flag and a length
  compare (plus the bounded wait when the queue has just filled).

Over 400 lines on purpose: the bound, the partial-write repair, the retry and the
health of one writer share its queue and its lock; split, each part would reach
into the others' state.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import io
import json
import logging
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from authz.record import DecisionRecord, log_fields
from authz.telemetry.metrics import MemoryMetrics, Metrics

log = logging.getLogger("authz.audit")

#: Records serialised and written per write call.
BATCH = 4096
#: Default bound of the queue (records); the policy's decision_log.max_queue.
DEFAULT_MAX_QUEUE = 65_536
#: Default wait for room when the queue is full (ms); the policy's decision_log.block_ms.
DEFAULT_BLOCK_MS = 50.0
#: At most one "dropped" line per this many seconds.
DROP_REPORT_INTERVAL = 5.0
#: While writes fail, the pending batch is retried this often (seconds), not every tick:
#: on a nearly full disk each retry writes what fits and takes it back again.
RETRY_INTERVAL = 0.25


#: A decision record as the engine builds it, or a plain dict (tests, tools).
Record = DecisionRecord | dict[str, Any]


class DecisionSink(Protocol):
    """Where decision records go: a :class:`~authz.record.DecisionListener` with a
    bound and a health. ``emit`` (``on_decision``) is on the request path."""

    def on_decision(self, record: DecisionRecord) -> None:
        """The listener entry point: the same as :meth:`emit`."""

    def emit(self, record: Record) -> None:
        """Take one decision record; must not block on I/O (a full sink counts and
        drops it after at most its configured wait)."""

    def ready(self) -> bool:
        """Whether a record emitted now would be kept and can be written: O(1)."""

    def healthy(self) -> bool:
        """False while records are being dropped or cannot be written."""

    def configure(self, *, max_queue: int, block_ms: float, on_failure: str) -> None:
        """Apply the policy's ``decision_log`` section (at load and on every reload)."""

    def close(self) -> None:
        """Flush and release; records emitted before close are written or counted."""

    async def start(self) -> None:
        """Start writing (a runtime: the service starts it before serving)."""

    async def aclose(self) -> None:
        """:meth:`close`, without blocking the event loop."""


class _NoLifecycle:
    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class MemorySink(_NoLifecycle):
    """Keeps records in a list (as dicts of their fields): for tests and the CLI."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        #: the records as emitted
        self.values: list[Record] = []

    def emit(self, record: Record) -> None:
        self.values.append(record)
        self.records.append(record.as_dict() if isinstance(record, DecisionRecord) else record)

    on_decision = emit

    def ready(self) -> bool:
        return True

    def healthy(self) -> bool:
        return True

    def configure(self, *, max_queue: int, block_ms: float, on_failure: str) -> None:
        return None

    def close(self) -> None:
        return None


class NullSink(_NoLifecycle):
    """Records nothing (``--decision-log off``): always ready."""

    def emit(self, record: Record) -> None:
        return None

    on_decision = emit

    def ready(self) -> bool:
        return True

    def healthy(self) -> bool:
        return True

    def configure(self, *, max_queue: int, block_ms: float, on_failure: str) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class SinkStats:
    """A snapshot of a sink's counters (records unless named otherwise)."""

    emitted: int  # handed to emit
    written: int  # written completely
    dropped: int  # not kept (queue full) or never written (unserialisable, left at close)
    write_failures: int  # failed write calls
    depth: int  # held now: queued plus the batch being written
    high_water: int  # the largest depth seen
    healthy: bool


def _value(counter: object) -> int:
    """A counter's value (its metrics keep it; 0 under no-op metrics)."""
    return int(getattr(counter, "value", 0))


_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode


class _Rfc3339:
    """Unix time -> RFC 3339 (UTC, milliseconds); the date part is formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, when: float) -> str:
        second = int(when // 1)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        millis = min(999, int((when - second) * 1000))
        return f"{self._prefix}.{millis:03d}Z"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return str(exc) or type(exc).__name__


class JsonLinesSink:
    """One JSON object per line to a stream (stdout by default) or a file.

    A record is serialised as built (:func:`authz.record.log_fields`: its unix
    ``time`` as RFC 3339, ``latency_ms`` rounded to microseconds), in the writer
    thread, not per request; the record itself is never changed. See the
    module docstring for the bound, the failure handling and the counters.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        path: str | None = None,
        interval: float = 0.05,
        max_queue: int = DEFAULT_MAX_QUEUE,
        block_ms: float = DEFAULT_BLOCK_MS,
        stall_after: float = 1.0,
        close_timeout: float = 10.0,
        metrics: Metrics | None = None,
        label: str = "decision log",
        metric_prefix: str = "authz_decision_log",
        lazy: bool = False,
    ) -> None:
        self._owned = path is not None or lazy
        self._stream: IO[str] | None = None
        self._fd: int | None = None
        if lazy:  # a subclass opens its own files (the audit trail: at start)
            self._name = label
        elif path is not None:
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            self._name = f"{label} {path}"
        else:
            self._stream = stream or sys.stdout
            try:
                self._fd = self._stream.fileno()
            except (OSError, ValueError, io.UnsupportedOperation):
                self._fd = None  # an in-memory stream: write() it
            name = getattr(self._stream, "name", None)
            self._name = f"{label} " + (name if isinstance(name, str) else f"fd {self._fd}")
        self._regular = False
        if self._fd is not None:
            st = os.fstat(self._fd)
            self._regular = stat.S_ISREG(st.st_mode)
            if self._regular and st.st_size:
                self._terminate_last_line(st.st_size)
        self._queue: collections.deque[Record] = collections.deque()
        self._max = max_queue
        self._limit = max_queue  # room left for the queue: max minus the batch in flight
        self._block = block_ms / 1000
        self._on_failure = "drop"
        self._interval = interval
        self._stall_after = stall_after
        self._close_timeout = close_timeout
        # writer state (the writer thread changes it; emit and health only read it)
        self._pending: bytes = b""  # the batch being written, serialised
        self._pending_at = 0  # bytes of it already written (pipes resume there)
        self._pending_count = 0
        self._writable = True  # False from a failed write until one succeeds
        self._failing_since = 0.0
        self._next_retry = 0.0
        self._failures_in_episode = 0
        self._write_started = 0.0  # monotonic start of the write in progress, 0 if none
        # counters: in the metrics; each series has one writing thread (named)
        m = metrics if metrics is not None else MemoryMetrics()
        self._taken = 0  # records the writer took from the queue (writer)
        self._emitted = m.counter(
            f"{metric_prefix}_emitted_total",
            "records handed to the decision log (counted as the writer takes them)",
        ).labels()  # writer, then close
        self._emitted_counted = 0
        self._written = m.counter(
            f"{metric_prefix}_written_total", "records written completely"
        ).labels()  # writer
        dropped = m.counter(
            f"{metric_prefix}_dropped_total",
            "records not written: queue full, not serialisable, or left unwritten at close",
            ("cause",),
        )
        self._dropped_full = dropped.labels("queue_full")  # emit found no room (event loop)
        self._unwritable = dropped.labels("unserialisable")  # writer
        self._left_at_close = dropped.labels("unwritten_at_close")  # close
        self._write_failures = m.counter(
            f"{metric_prefix}_write_failures_total", "write calls that failed"
        ).labels()  # writer
        self._depth = m.gauge(
            f"{metric_prefix}_queue_depth", "records held: queued plus the batch in flight"
        ).labels()  # writer
        self._high_water_gauge = m.gauge(
            f"{metric_prefix}_queue_high_water", "the largest queue depth seen"
        ).labels()
        self._high_water = 0
        # overflow episode state (emit's thread starts one, the writer ends it)
        self._overflowing = False
        self._overflow_started = 0.0
        self._overflow_dropped_at_start = 0
        self._dropped_reported = 0
        self._next_drop_report = 0.0
        self._room = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._time = _Rfc3339()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> JsonLinesSink:
        """Start the writer thread (once); returns the sink. Records emitted before are
        kept in the queue (within its bound) and written once it runs."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._run, name="authz-decision-log", daemon=True
            )
            self._thread.start()
        return self

    async def start(self) -> None:
        self.open()

    async def aclose(self) -> None:
        """:meth:`close` in a worker thread (it joins the writer: up to close_timeout)."""
        await asyncio.to_thread(self.close)

    # -- the request path --------------------------------------------------------------

    def emit(self, record: Record) -> None:
        if len(self._queue) < self._limit:
            self._queue.append(record)
        else:
            self._overflow(record)

    on_decision = emit

    def ready(self) -> bool:
        if self._writable and len(self._queue) < self._limit:
            return True
        return self._writable and self._wait_for_room()

    def _wait_for_room(self) -> bool:
        """The queue is full: wait for the writer (once per overflow episode)."""
        if self._overflowing:
            return False
        if self._block > 0:
            self._room.clear()
            self._wake.set()
            deadline = time.monotonic() + self._block
            while len(self._queue) >= self._limit:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    break
                self._room.wait(left)
                self._room.clear()
        if len(self._queue) < self._limit:
            return True
        self._overflowing = True
        self._overflow_started = time.monotonic()
        self._overflow_dropped_at_start = _value(self._dropped_full)
        self._next_drop_report = self._overflow_started + DROP_REPORT_INTERVAL
        self._dropped_reported = _value(self._dropped_full)
        self._high_water = max(self._high_water, self._max)
        log.error(
            "%s: queue full (%d records) after waiting %.0f ms; %s until the writer catches up",
            self._name,
            self._max,
            self._block * 1000,
            "denying requests and dropping records"
            if self._on_failure == "deny"
            else "dropping records",
        )
        return False

    def _overflow(self, record: Record) -> None:
        if not self._overflowing and self._wait_for_room():
            self._queue.append(record)
            return
        self._dropped_full.inc()
        now = time.monotonic()
        if now >= self._next_drop_report:
            self._next_drop_report = now + DROP_REPORT_INTERVAL
            self._report_drops("still full")

    def _report_drops(self, state: str) -> None:
        full = _value(self._dropped_full)
        since = full - self._dropped_reported
        self._dropped_reported = full
        log.error(
            "%s: %d records dropped since the last report (%d in all); queue %s",
            self._name,
            since,
            full + _value(self._unwritable),
            state,
        )

    # -- state -------------------------------------------------------------------------

    def configure(
        self,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        block_ms: float = DEFAULT_BLOCK_MS,
        on_failure: str = "drop",
    ) -> None:
        self._max = max_queue
        self._limit = max_queue - self._pending_count
        self._block = block_ms / 1000
        self._on_failure = on_failure

    def healthy(self) -> bool:
        if not self._writable or self._overflowing:
            return False
        started = self._write_started
        return not (started and time.monotonic() - started > self._stall_after)

    def stats(self) -> SinkStats:
        queued = len(self._queue)
        depth = queued + self._pending_count
        return SinkStats(
            emitted=self._taken + queued + _value(self._dropped_full),
            written=_value(self._written),
            dropped=_value(self._dropped_full)
            + _value(self._unwritable)
            + _value(self._left_at_close),
            write_failures=_value(self._write_failures),
            depth=depth,
            high_water=max(self._high_water, depth),
            healthy=self.healthy(),
        )

    def _count_emitted(self, queued: int = 0) -> None:
        """Bring the emitted counter up to taken + dropped for a full queue (+ ``queued``):
        one writing thread (the writer; close once it has joined)."""
        total = self._taken + _value(self._dropped_full) + queued
        if total > self._emitted_counted:
            self._emitted.inc(total - self._emitted_counted)
            self._emitted_counted = total

    # -- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self._drain(final=stopping)
            except Exception:  # pragma: no cover - the writer must outlive a bug
                log.exception("%s: the writer failed", self._name)
            if stopping:
                return

    def _drain(self, *, final: bool = False) -> None:
        queue = self._queue
        depth = len(queue) + self._pending_count
        if depth > self._high_water:
            self._high_water = depth
            self._high_water_gauge.set(depth)
        self._depth.set(depth)
        self._count_emitted()
        if self._pending:
            if not (self._writable or final) and time.monotonic() < self._next_retry:
                return
            if not self._flush():
                return
        while queue:
            n = min(len(queue), BATCH, self._max)
            self._limit = self._max - n  # claim the room before taking: the bound holds
            pop = queue.popleft
            batch = [pop() for _ in range(n)]
            self._taken += n
            self._pending, self._pending_count = self._serialise(batch)
            self._pending_at = 0
            if not self._flush():
                return
        if self._overflowing and len(queue) <= self._max // 2:
            self._end_overflow()
        self._idle(final)

    def _serialise(self, batch: list[Record]) -> tuple[bytes, int]:
        """Whole lines for ``batch`` and how many records they hold (the writer thread).
        Subclasses format their own lines (the audit trail chains and seals them)."""
        rfc3339 = self._time
        lines = []
        for rec in batch:
            try:
                lines.append(_ENCODE(log_fields(rec, rfc3339)))
            except (TypeError, ValueError):  # pragma: no cover - records are flat
                self._unwritable.inc()
                log.error("%s: a record could not be serialised; dropped", self._name)
        return (("\n".join(lines) + "\n").encode() if lines else b""), len(lines)

    def _idle(self, final: bool) -> None:
        """Called by the writer once the queue is written (``final``: at close). A hook:
        the audit trail writes its timed and closing checkpoints here."""

    def _written_batch(self) -> None:
        """Called by the writer after each batch is written completely. A hook: the
        audit trail fsyncs and rotates here."""

    def _end_overflow(self) -> None:
        self._overflowing = False
        dropped = _value(self._dropped_full) - self._overflow_dropped_at_start
        self._report_drops("has room again")
        log.warning(
            "%s: recovered; %d records dropped in %.1f s of overflow",
            self._name,
            dropped,
            time.monotonic() - self._overflow_started,
        )

    def _flush(self) -> bool:
        """Write the pending batch; False (and it stays pending) if that failed."""
        try:
            if self._pending:
                self._write_pending()
        except (OSError, ValueError) as exc:
            self._write_failures.inc()
            self._failures_in_episode += 1
            self._next_retry = time.monotonic() + max(self._interval, RETRY_INTERVAL)
            if self._writable:
                self._writable = False
                self._failing_since = time.monotonic()
                log.error(
                    "cannot write the %s (%s); records are kept (up to %d) and "
                    "retried every %.2f s%s",
                    self._name,
                    _describe(exc),
                    self._max,
                    max(self._interval, RETRY_INTERVAL),
                    "; denying requests until it recovers" if self._on_failure == "deny" else "",
                )
            return False
        self._written.inc(self._pending_count)
        self._written_batch()
        self._pending = b""
        self._pending_at = 0
        self._pending_count = 0
        self._limit = self._max
        if not self._writable:
            self._writable = True
            log.warning(
                "%s writable again after %.1f s (%d failed writes)",
                self._name,
                time.monotonic() - self._failing_since,
                self._failures_in_episode,
            )
            self._failures_in_episode = 0
        self._room.set()
        return True

    def _write_pending(self) -> None:
        stream, fd = self._stream, self._fd
        if stream is not None and stream.closed:
            raise ValueError("the stream is closed")
        self._write_started = time.monotonic()
        try:
            if fd is None:
                assert stream is not None
                stream.write(self._pending.decode())
                stream.flush()
            else:
                if stream is not None:
                    stream.flush()  # anything printed through the Python stream goes first
                self._write_fd(fd)
        finally:
            self._write_started = 0.0

    def _write_fd(self, fd: int) -> None:
        data = memoryview(self._pending)
        done = self._pending_at
        written_now = 0
        try:
            while done < len(data):
                n = os.write(fd, data[done:])
                done += n
                written_now += n
        except OSError:
            if self._regular:
                self._take_back(fd, written_now)
                self._pending_at = 0
            else:
                self._pending_at = done  # a pipe cannot be rewound: finish the line later
            raise

    def _take_back(self, fd: int, count: int) -> None:
        """Truncate the ``count`` bytes a failed write left at the end of the file."""
        if not count:
            return
        try:
            end = os.lseek(fd, 0, os.SEEK_CUR)
            if os.fstat(fd).st_size != end:  # someone appended after us: leave it be
                log.error("%s: cannot remove a partial line", self._name)
                return
            os.ftruncate(fd, end - count)
            os.lseek(fd, end - count, os.SEEK_SET)
        except OSError as exc:
            log.error("%s: cannot remove a partial line: %s", self._name, exc)

    def _terminate_last_line(self, size: int) -> None:
        """A file left with a cut line (a crash mid-write) gets its newline first, so the
        first new record is not glued onto it."""
        assert self._fd is not None
        try:
            if os.pread(self._fd, 1, size - 1) != b"\n":
                os.write(self._fd, b"\n")
        except OSError:
            pass  # not readable (O_WRONLY on some files) or full: the writes will say

    # -- shutdown ----------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._room.set()
        thread = self._thread
        if thread is not None:  # never started: what was emitted stays unwritten
            thread.join(timeout=self._close_timeout)
        stuck = thread is not None and thread.is_alive()
        self._left_at_close.inc(len(self._queue) + self._pending_count)
        if not stuck:  # the writer's series are ours now
            self._count_emitted(len(self._queue))
            self._depth.set(len(self._queue) + self._pending_count)
        s = self.stats()
        (log.warning if s.dropped or stuck else log.info)(
            "%s closed: %d records emitted, %d written, %d dropped "
            "(%d queue full, %d unwritten at close), %d failed writes, queue high-water %d "
            "of %d%s",
            self._name,
            s.emitted,
            s.written,
            s.dropped,
            _value(self._dropped_full),
            _value(self._left_at_close),
            s.write_failures,
            s.high_water,
            self._max,
            "; the writer is still blocked" if stuck else "",
        )
        if self._owned and not stuck and self._fd is not None:
            os.close(self._fd)
