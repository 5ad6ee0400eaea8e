"""The process scorer: the detectors score in a child process, off the serving one's GIL.

:class:`ProcessScorer` is the :class:`~authz.detect.scorer.Scorer` the ``detect``
stage sees when the policy says ``detection.scorer: process`` (the default). The
request path is the same (the stage appends a 5-tuple to :attr:`queue`, the feed an
access-log entry); what changes is what a drain does with them:

- **Serving process.** Every ``interval`` the drain writes up to :data:`SLICE` queued
  items (plain tuples already: the record's fields the detectors read, no class to
  pickle) to the child as one ``marshal`` frame over a socket pair: a fraction of a
  microsecond an item, against ~13 µs for scoring it here. The socket's write buffer
  is bounded (:data:`MAX_BUFFERED`): while a child is that far behind, or absent,
  items wait in the stage's bounded queue (full: dropped and counted in
  ``authz_detect_dropped_total``); a decision never waits.
- **Child** (``python -m authz.detect.child``): a plain :class:`Scorer` with the same
  configuration (every proposed policy section is forwarded, pickled, with the epoch
  the stage tags its items with), scoring each frame as it arrives. Its findings come
  back as actions, with the child's counters since the last reply; the serving
  process logs, counts and applies each action through its own sink (the enforcer),
  exactly as the inline scorer does.
- **Failure.** A child that dies is restarted (after 1 s, doubling to 30 s) and given
  the current sections again; its tables start empty. Until it is back, items wait
  in the bounded queue: detection degrades, decisions never wait.
- **Stop.** :meth:`ProcessScorer.aclose` ships what is queued, closes the socket (the
  child scores the rest and answers), applies the last actions and reaps the child.

Frames are a 4-byte length and a kind byte: ``I`` (items, marshal) and ``P``
(control, pickle) to the child; ``A`` (actions and counters, pickle) back. Both ends
are this package, over a socket pair nobody else holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import os
import pickle
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from authz.detect.events import Action, ActionSink, Observation, ResponseObservation
from authz.detect.intake import NamedRoute
from authz.detect.scorer import SLICE, Scorer
from authz.policy.detection_config import DetectionConfig
from authz.telemetry.metrics import Metrics

log = logging.getLogger("authz.detect")

#: bytes the serving process buffers for a child that is not reading (then: drop)
MAX_BUFFERED = 8 << 20
#: the environment variable naming a shared child's socket (set by the supervisor)
SHARED_SOCKET = "AUTHZ_DETECT_SOCKET"
#: the longest frame either side accepts
MAX_FRAME = 64 << 20
#: restart back-off after the child dies (seconds): first and longest
RESTART_FIRST, RESTART_MAX = 1.0, 30.0
#: how long a stop waits for the child's last answer and exit (seconds)
STOP_TIMEOUT = 5.0

_HEADER = struct.Struct(">I")
#: item kinds in a frame: a response observation, a full observation (the stage's
#: 5-tuples are sent as they are, the record's fields first)
RESPONSE, OBSERVATION = 1, 2


class RouteRef(NamedTuple):
    """What the scorer reads of a route (its name and template): picklable."""

    name: str
    path: str


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload) + 1) + kind + payload


def encode_items(items: Iterable[Any]) -> bytes:
    """One ``I`` frame's payload: each queued item as plain tuples. The stage's
    5-tuples already are (the record's picked fields, template, credential, size,
    epoch: :data:`~authz.detect.intake.Pending`) and go as they are; the feed's
    entries and full observations as their values, tagged."""
    out: list[tuple[Any, ...]] = []
    append = out.append
    for item in items:
        if type(item) is tuple:
            append(item)
        elif isinstance(item, ResponseObservation):
            append((RESPONSE, item[:]))
        else:
            append((OBSERVATION, item[:]))
    return marshal.dumps(out)


class ProcessScorer(Scorer):
    """The serving process's half (see the module docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        sink: Callable[[], ActionSink] | None = None,
        clock: Callable[[], float] = time.time,
        command: tuple[str, ...] | None = None,
        connect: str | None = None,
    ) -> None:
        super().__init__(metrics, sink=sink, clock=clock)
        self._command = command or (sys.executable, "-m", "authz.detect.child")
        #: a shared child's Unix socket (the ``--workers`` supervisor's), instead of
        #: a child of this process's own
        self.connect = connect if connect is not None else os.environ.get(SHARED_SOCKET)
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._enabled = False
        self.restarts = 0
        self._up = metrics.gauge(
            "authz_detect_scorer_up", "1 while the scoring process takes batches, else 0"
        ).labels()
        self._restarted = metrics.counter(
            "authz_detect_scorer_restarts_total",
            "times the scoring process stopped and was restarted",
        ).labels()
        #: item batches written to the child, and the child's answers to them (each
        #: batch gets one): equal when the child has scored all it was sent
        self.batches = 0
        self.answered = 0

    # -- configuration: forwarded --------------------------------------------------

    def propose(self, config: DetectionConfig, routes: Iterable[NamedRoute] = ()) -> int:
        refs = tuple(RouteRef(r.name, r.path) for r in routes)
        epoch = super().propose(config, refs)
        self._enabled = True
        self._send_sections()
        return epoch

    def configure(self, config: DetectionConfig, routes: Iterable[NamedRoute] = ()) -> None:
        # the child builds the tables; this side needs the queue's bound and pace
        self.config = config
        self.bound = config.queue
        self.interval = config.interval

    def disable(self) -> None:
        super().disable()
        self._enabled = False
        self._control(("disable",))

    def _send_sections(self) -> None:
        self._control(("sections", dict(self._epochs), self._epoch, self._next_epoch))

    def _control(self, message: tuple[Any, ...]) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(frame(b"P", pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)))

    # -- the drain: ship, do not score ---------------------------------------------

    def ready(self) -> bool:
        """Whether a child is there to take a batch (and not far behind)."""
        writer = self._writer
        return (
            self._enabled
            and writer is not None
            and not writer.is_closing()
            and writer.transport.get_write_buffer_size() <= MAX_BUFFERED
        )

    def drain(self, limit: int | None = None) -> int:
        """Ship up to ``limit`` queued items (all when None) to the child; none while it
        is not :meth:`ready` (they wait in the bounded queue, which the stage keeps)."""
        queue = self.queue
        if not queue or not self.ready():
            return 0
        n = len(queue) if limit is None else min(limit, len(queue))
        popleft = queue.popleft
        items = [popleft() for _ in range(n)]
        try:
            payload = encode_items(items)
        except ValueError:  # a value marshal cannot carry: a bug, never a stall
            self._errors.inc()
            log.exception("detection: a batch could not be encoded")
            return n
        writer = self._writer
        assert writer is not None
        writer.write(frame(b"I", payload))
        self.batches += 1
        return n

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            while self.queue and self.ready():
                self.drain(SLICE)
                await asyncio.sleep(0)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._closing = False
        if self._supervisor is None or self._supervisor.done():
            ready = asyncio.get_running_loop().create_future()
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(ready), name="authz.detect.child"
            )
            await ready
        await super().start()

    async def aclose(self) -> None:
        await super().aclose()  # stops the drain task, ships what is queued
        self._closing = True
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(OSError, ConnectionError):
                writer.write_eof()  # the child scores what it has and answers
                await asyncio.wait_for(writer.drain(), STOP_TIMEOUT)
        if self._reader_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader_task, STOP_TIMEOUT)
        await self._reap()
        if writer is not None:
            writer.close()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor

    @property
    def connected(self) -> bool:
        """Whether a child (its own, or the shared one) can take batches now."""
        writer = self._writer
        return writer is not None and not writer.is_closing()

    @property
    def child_pid(self) -> int | None:
        """The child's pid once it can take batches (None before, and after a stop)."""
        process = self._process
        if process is None or process.returncode is not None or self._writer is None:
            return None
        return process.pid

    async def _supervise(self, ready: asyncio.Future[None]) -> None:
        delay = RESTART_FIRST
        while not self._closing:
            began = time.monotonic()
            self._reader_task = None
            try:
                await self._spawn()
            except OSError as exc:
                where = self.connect or "a child process"
                log.warning("detection: cannot reach the scoring process (%s): %s", where, exc)
            except Exception:
                log.exception("detection: could not start the scoring process")
            finally:
                if not ready.done():
                    ready.set_result(None)
            if self._reader_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader_task
            if self._closing:
                return
            await self._reap()
            self._writer = None
            self._up.set(0)
            if time.monotonic() - began > 60.0:
                delay = RESTART_FIRST  # it ran for a while: start over quickly
            again = "reconnecting" if self.connect else "restarting"
            log.warning("detection: the scoring process stopped; %s in %.0f s", again, delay)
            await asyncio.sleep(delay)
            delay = min(RESTART_MAX, delay * 2)
            self.restarts += 1
            self._restarted.inc()

    async def _spawn(self) -> None:
        if self.connect:
            reader, writer = await asyncio.open_unix_connection(self.connect, limit=MAX_FRAME)
            self._started(reader, writer)
            return
        ours, theirs = socket.socketpair()
        try:
            env = dict(os.environ)
            # the child imports this very package, wherever it was imported from
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
            self._process = await asyncio.create_subprocess_exec(
                *self._command,
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                cwd=root,  # (python -m puts the working directory first on the path)
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours, limit=MAX_FRAME)
        self._started(reader, writer)

    def _started(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._up.set(1)
        self.answered = self.batches  # what a dead child was sent is not coming back
        if self._enabled:  # (no await in between: the sections precede every batch)
            self._send_sections()
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read(reader), name="authz.detect.replies"
        )

    async def _reap(self) -> None:
        process = self._process
        if process is None:
            return
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT if self._closing else 0.5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(_HEADER.size)
                (size,) = _HEADER.unpack(header)
                if not 1 <= size <= MAX_FRAME:
                    log.error("detection: a bad frame from the scoring process (%d bytes)", size)
                    return
                body = await reader.readexactly(size)
                if body[:1] != b"A":
                    continue
                try:
                    self._replies(pickle.loads(body[1:]))
                except Exception:  # one bad answer: say so, keep reading the next
                    self._errors.inc()
                    log.exception("detection: an answer of the scoring process failed")
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the child closed (stopped or died): the supervisor decides

    def _replies(
        self, message: tuple[list[tuple[Any, ...]], list[MetricChange], bool, bool]
    ) -> None:
        """A child's answer: the actions it found (for a shared child, in any worker's
        batch), its metric changes, whether this process counts and logs them (one
        worker does), and whether it answers one of this process's batches."""
        actions, changes, counts, answer = message
        if answer:
            self.answered += 1
        for fields in actions:
            action = Action(*fields)
            if counts:
                self._emit(action)
            else:  # another worker logs and counts it; this one enforces it too
                try:
                    self._sink().apply(action)
                except Exception:
                    self._errors.inc()
                    log.exception("action sink failed")
        merge_metrics(self.metrics, changes)


#: one metric series the child changed: kind, name, description, label names, label
#: values, and the counter's increase (or the gauge's value)
MetricChange = tuple[str, str, str, tuple[str, ...], tuple[str, ...], float]


def merge_metrics(metrics: Metrics, changes: Iterable[MetricChange]) -> None:
    """Apply the child's metric changes to the serving process's metrics: its counters
    (queue, tables, detectors) then appear where the inline scorer's would."""
    for kind, name, description, label_names, labels, value in changes:
        try:
            if kind == "counter":
                if value > 0:
                    metrics.counter(name, description, label_names).labels(*labels).inc(value)
            elif kind == "gauge":
                metrics.gauge(name, description, label_names).labels(*labels).set(value)
        except Exception:  # a name taken as another kind here: skip it, say so once
            log.debug("detection: metric %s not merged", name, exc_info=True)


def decode_items(payload: bytes, epochs: dict[int, int] | None = None) -> list[Any]:
    """The child's side of :func:`encode_items`: the stage's 5-tuples (their epoch
    mapped through ``epochs``: the serving process's section numbers onto the
    child's) and the feed's entries, in queue order."""
    new = tuple.__new__
    out: list[Any] = []
    append = out.append
    for item in marshal.loads(payload):
        if len(item) == 5:
            if epochs is not None:
                fields, template, credential, size, epoch = item
                # 0: none known, the scorer's current one
                item = (fields, template, credential, size, epochs.get(epoch, 0))
            append(item)
        elif item[0] == RESPONSE:
            append(new(ResponseObservation, item[1]))
        else:
            append(new(Observation, item[1]))
    return out
