"""Decision log sinks.

A sink takes one record (a flat dict of JSON values) per decision. ``emit`` is
on the request path, so the JSON sink only queues the record; a writer thread
serialises and writes it in batches, off the event loop. Records are never
dropped: the queue is unbounded in count but the writer drains it continuously,
and ``close`` flushes what is left.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any, Protocol

log = logging.getLogger("authz.audit")


class DecisionSink(Protocol):
    def emit(self, record: dict[str, Any]) -> None:
        """Take one decision record; must not block on I/O."""

    def close(self) -> None:
        """Flush and release; records emitted before close are written."""


class MemorySink:
    """Keeps records in a list: for tests and the CLI."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        return None


class NullSink:
    def emit(self, record: dict[str, Any]) -> None:
        return None

    def close(self) -> None:
        return None


_STOP = object()


def _rfc3339(record: Any) -> Any:
    """Render a unix ``time`` as RFC 3339 (here, in the writer thread, not per request)."""
    when = record.get("time")
    if isinstance(when, float | int):
        record = dict(record)
        record["time"] = (
            datetime.fromtimestamp(when, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
    return record


class JsonLinesSink:
    """One JSON object per line to a stream (stdout by default) or a file."""

    def __init__(self, stream: IO[str] | None = None, *, path: str | None = None) -> None:
        self._owned = path is not None
        self._stream: IO[str] = (
            open(path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
            if path is not None
            else (stream or sys.stdout)
        )
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="authz-decision-log", daemon=True)
        self._closed = False
        self._thread.start()

    def emit(self, record: dict[str, Any]) -> None:
        self._queue.put(record)

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            batch = [item]
            try:
                while len(batch) < 512:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            lines = []
            stop = False
            for rec in batch:
                if rec is _STOP:
                    stop = True
                    continue
                try:
                    lines.append(json.dumps(_rfc3339(rec), separators=(",", ":"), default=str))
                except (TypeError, ValueError):  # pragma: no cover - records are flat
                    log.exception("unserialisable decision record")
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    log.exception("cannot write the decision log")
            if stop:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=10)
        if self._owned:
            self._stream.close()
