"""The audit trail's writer: a runtime that chains, seals, rotates and fsyncs.

A :class:`~authz.audit.sink.JsonLinesSink` underneath (its bounded queue, writer
thread, batch writes, partial-write repair and retry), with its own lines: each
decision record or control-plane call becomes one canonical JSON line carrying
``seq`` and ``prev`` (:mod:`authz.audit.chain`), and the writer adds

- a ``file`` line first in every file (the chain's name, the file's index, the key);
- a signed ``checkpoint`` after every ``checkpoint.records`` records, when the first
  unsealed record is ``checkpoint.interval`` old, before each rotation and at close
  (``final``), so that cutting off the tail is detected;
- rotation when a file reaches ``rotate.size`` or ``rotate.age``;
- fsync per ``fsync`` (``always``: after every batch; ``interval``: at most every
  ``fsync_interval_ms``; ``never``; rotation and close always fsync).

The request path is O(1): :class:`AuditGate` (one per policy) appends the frozen
decision record and the policy's :class:`~authz.audit.entry.AuditView` to the queue;
building the entry, hashing, signing and fsync happen in the writer thread.

Nothing is dropped silently. :meth:`AuditWriter.ready` is the engine's question
before it lets a decision through: the queue has room and (``on_full: deny``) writes
succeed. ``backpressure`` waits up to ``block_ms`` for room first. A decision that
gets no room is denied ``audit_unavailable`` (503) and its record counted as refused
(``authz_audit_refused_total``) and logged; a full or read-only disk stops writes,
so the queue fills and the same happens (``deny``: at once). Refusals are tallied
(:mod:`authz.audit.gap`) and, once the queue is written again, one ``gap`` line in the
chain says how many were refused, when, and for which reasons.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

from authz.audit import chain as C
from authz.audit.encode import DecisionEncoder
from authz.audit.entry import AuditView, control_entry
from authz.audit.gap import GapTally
from authz.audit.sink import JsonLinesSink
from authz.policy.audit_config import AuditConfig
from authz.record import DecisionRecord
from authz.telemetry.metrics import MemoryMetrics, Metrics

log = logging.getLogger("authz.audit")

#: at most one "refused" log line per this many seconds
REFUSED_REPORT_INTERVAL = 5.0


def default_chain_name() -> str:
    """host-pid-start time: one chain per writer, unique across workers and restarts."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{host}-{os.getpid()}-{stamp}"


class AuditWriter(JsonLinesSink):
    """See the module docstring. Built at policy load (nothing opened), started by the
    service; ``aclose`` writes what is queued, the closing checkpoint, and fsyncs."""

    def __init__(
        self,
        config: AuditConfig,
        metrics: Metrics | None = None,
        *,
        chain: str | None = None,
        interval: float = 0.05,
    ) -> None:
        m = metrics if metrics is not None else MemoryMetrics()
        super().__init__(
            lazy=True,
            label=f"audit trail {config.dir}",
            metric_prefix="authz_audit",
            interval=interval,
            max_queue=config.max_queue,
            block_ms=config.block_ms,
            metrics=m,
        )
        self.config = config
        self._key = C.private_key(config.key_pem)
        public = self._key.public_key()
        self._key_id = C.key_id(public)
        self._public = __import__("base64").b64encode(C.public_bytes(public)).decode()
        self.chain = chain or default_chain_name()
        self.name = "audit"
        # chain state (the writer thread)
        self._seq = 0
        self._prev = C.GENESIS
        self._records = 0
        self._unsealed = 0
        self._first_unsealed = 0.0
        self._file_index = -1
        self._file_bytes = 0
        self._file_records = 0
        self._file_opened = 0.0
        self._rotating = False
        self._dirty = False
        self._last_fsync = 0.0
        self._refused = m.counter(
            "authz_audit_refused_total",
            "records the audit trail had no room for (their decisions were denied "
            "audit_unavailable, or were denies)",
        ).labels()
        self._checkpoints = m.counter(
            "authz_audit_checkpoints_total", "signed checkpoints written"
        ).labels()
        self._next_refused_report = 0.0
        self._encoder = DecisionEncoder(self._time)
        self._gaps = GapTally()
        self.reconfigure(config)

    # -- configuration ------------------------------------------------------------------

    def reconfigure(self, config: AuditConfig) -> None:
        """Apply a (reloaded) policy's section; ``dir`` and ``signing_key`` need a restart."""
        if (config.dir, config.key_pem) != (self.config.dir, self.config.key_pem):
            log.warning(
                "audit: a new dir or signing_key takes effect at the next restart; "
                "still writing chain %s to %s",
                self.chain,
                self.config.dir,
            )
            config = AuditConfig(
                **{
                    **{f: getattr(config, f) for f in config.__dataclass_fields__},
                    "dir": self.config.dir,
                    "signing_key": self.config.signing_key,
                    "key_pem": self.config.key_pem,
                }
            )
        self.config = config
        self._on_full = config.on_full
        self._fsync_every = config.fsync_interval_ms / 1000
        super().configure(max_queue=config.max_queue, block_ms=config.block_ms)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is None:
            os.makedirs(self.config.dir, exist_ok=True)
            self._open_file()
            self._pending = self._line(self._header()) + b"\n"
        self.open()

    def _open_file(self) -> None:
        self._file_index += 1
        path = os.path.join(self.config.dir, C.file_name(self.chain, self._file_index))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o640)
        self._regular = True
        self._file_bytes = 0
        self._file_records = 0
        self._file_opened = time.monotonic()
        self.path = path

    # -- the request path ---------------------------------------------------------------

    def ready(self) -> bool:
        """Can a record be taken now? O(1) while there is room; under backpressure a
        full queue waits up to ``block_ms`` for the writer."""
        if len(self._queue) < self._limit and (self._writable or self._on_full != "deny"):
            return True
        if self._on_full == "deny" or self._block <= 0:
            return False
        self._room.clear()
        self._wake.set()
        deadline = time.monotonic() + self._block
        while len(self._queue) >= self._limit:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                return False
            self._room.wait(left)
            self._room.clear()
        return True

    def emit(self, record: Any) -> None:
        """Queue one item: ``(DecisionRecord, AuditView)`` or a control entry (a dict)."""
        if len(self._queue) < self._limit:
            self._queue.append(record)
            return
        self._refused.inc()
        self._gaps.refuse(record, time.time())
        now = time.monotonic()
        if now >= self._next_refused_report:
            self._next_refused_report = now + REFUSED_REPORT_INTERVAL
            log.error(
                "%s: no room for a record (queue of %d full%s); %d refused so far, their "
                "decisions denied audit_unavailable",
                self._name,
                self._max,
                "" if self._writable else ", writes failing",
                int(getattr(self._refused, "value", 0)),
            )

    on_decision = emit

    def record_control(
        self, method: str, caller: str, peer: str, outcome: str, detail: dict[str, Any]
    ) -> None:
        """One control-plane call (from the control server's call gate)."""
        self.emit(control_entry(method, caller, peer, outcome, time.time(), detail))

    # -- the writer thread --------------------------------------------------------------

    def _line(self, entry: dict[str, Any]) -> bytes:
        entry["seq"] = self._seq
        entry["prev"] = self._prev
        line = C.canonical(entry)
        self._prev = C.line_hash(line)
        self._seq += 1
        self._file_bytes += len(line) + 1
        return line

    def _header(self) -> dict[str, Any]:
        return {
            "kind": "file", "format": C.FORMAT, "chain": self.chain, "file": self._file_index,
            "time": time.time(), "key_id": self._key_id, "public_key": self._public,
        }  # fmt: skip

    def _checkpoint(self, final: bool) -> bytes:
        now = time.time()
        message = C.checkpoint_message(self.chain, self._seq, self._prev, now, self._records, final)
        entry = {
            "kind": "checkpoint", "chain": self.chain, "time": now, "records": self._records,
            "final": final, "key_id": self._key_id, "sig": C.sign(self._key, message),
        }  # fmt: skip
        self._unsealed = 0
        self._checkpoints.inc()
        return self._line(entry)

    def _serialise(self, batch: list[Any]) -> tuple[bytes, int]:
        """The batch's lines, chained, with a checkpoint every ``checkpoint_records``;
        the chain state is kept in locals and written back (a decision line costs its
        encoding and one SHA-256, nothing else per record)."""
        lines: list[bytes] = []
        append = lines.append
        count = 0
        every = self.config.checkpoint_records
        fast, generic = self._encoder.fast, self._encoder.generic
        seq, prev, unsealed, size = self._seq, self._prev, self._unsealed, 0
        for item in batch:
            try:
                if type(item) is tuple:
                    line = fast(item[0], item[1], seq, prev) or generic(item[0], item[1], seq, prev)
                    prev = sha256(line).hexdigest()
                    seq += 1
                    size += len(line) + 1
                    append(line)
                else:
                    self._seq, self._prev = seq, prev
                    append(self._line(dict(item)))
                    seq, prev = self._seq, self._prev
            except (TypeError, ValueError, AttributeError):  # pragma: no cover - a bug
                self._unwritable.inc()
                log.exception("%s: a record could not be serialised", self._name)
                continue
            count += 1
            if not unsealed:
                self._first_unsealed = time.monotonic()
            unsealed += 1
            if unsealed >= every:
                self._seq, self._prev, self._records = seq, prev, self._records + count
                self._file_records += count
                count_sealed = count
                append(self._checkpoint(False))  # chains on, resets _unsealed
                seq, prev, unsealed = self._seq, self._prev, 0
                self._records -= count_sealed  # added once below, with the rest
                self._file_records -= count_sealed
        self._seq, self._prev, self._unsealed = seq, prev, unsealed
        self._records += count
        self._file_records += count
        self._file_bytes += size
        if not lines:
            return b"", count
        append(b"")  # the last newline, without copying the batch once more
        return b"\n".join(lines), count

    def _gap_line(self, gap: dict[str, Any]) -> bytes:
        line = self._line(gap)
        self._records += 1
        self._file_records += 1
        if not self._unsealed:
            self._first_unsealed = time.monotonic()
        self._unsealed += 1
        return line

    def _write_line(self, line: bytes) -> bool:
        """Write one writer-made line (header, checkpoint) through the batch machinery."""
        self._pending, self._pending_count, self._pending_at = line + b"\n", 0, 0
        return self._flush()

    def _written_batch(self) -> None:
        self._dirty = True
        if self.config.fsync == "always":
            self._fsync()

    def _fsync(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._write_failures.inc()
            log.error("%s: fsync failed: %s", self._name, exc)
            return
        self._dirty = False
        self._last_fsync = time.monotonic()

    def _idle(self, final: bool) -> None:
        config = self.config
        gap = self._gaps.take()
        # room is back: the trail says what it could not keep (a failed write stays
        # pending and is retried, like any line)
        if gap is not None and not self._write_line(self._gap_line(gap)):
            return
        now = time.monotonic()
        if (
            not self._rotating
            and self._file_records
            and (
                self._file_bytes >= config.rotate_size
                or now - self._file_opened >= config.rotate_age
            )
        ):
            self._rotating = True  # the seal below belongs to the file being closed
            if not self._write_line(self._checkpoint(False)):
                return
        if self._rotating:
            self._fsync()
            old = self._fd
            try:
                self._open_file()
            except OSError as exc:
                self._file_index -= 1
                self._write_failures.inc()
                log.error("%s: cannot open the next file: %s", self._name, exc)
                return
            if old is not None:
                os.close(old)
            self._rotating = False
            if not self._write_line(self._line(self._header())):
                return
        due = self._unsealed and now - self._first_unsealed >= config.checkpoint_interval
        if due and not self._write_line(self._checkpoint(False)):
            return
        if final:
            if self._write_line(self._checkpoint(True)):
                self._fsync()
            return
        interval_due = now - self._last_fsync >= self._fsync_every
        if config.fsync == "interval" and self._dirty and interval_due:
            self._fsync()


class AuditGate:
    """One policy's door to the writer: the engine asks :meth:`ready` and hands each
    decision record to :meth:`on_decision` (O(1): a tuple appended to a deque)."""

    __slots__ = ("config", "ready", "view", "writer")

    def __init__(self, writer: AuditWriter, view: AuditView, config: AuditConfig) -> None:
        self.writer = writer
        self.view = view
        self.config = config
        self.ready = writer.ready

    def apply(self) -> None:
        """This policy's settings for the writer (called as the policy goes live)."""
        self.writer.reconfigure(self.config)

    def on_decision(self, record: DecisionRecord) -> None:
        try:
            self.writer.emit((record, self.view))
        except Exception:  # pragma: no cover - a broken writer must not break decisions
            log.exception("audit trail failed")
