"""The scoring process (see :mod:`authz.detect.remote`).

    python -m authz.detect.child FD              # one serving process's own child
    python -m authz.detect.child --listen PATH   # one for every --workers worker

Keeps a plain :class:`~authz.detect.scorer.Scorer` configured with the sections it
is sent, scores each batch of items as it arrives and answers with the actions found
and the metric changes since the last answer. It never writes anywhere else: the
serving processes apply, log and count the actions.

- **One serving process** (``FD``, a socket inherited from it): exits when the socket
  closes, after scoring what it was sent.
- **Every worker of a replica** (``--listen PATH``, a Unix socket the ``--workers``
  supervisor starts it on and tells the workers of): one scorer sees every worker's
  decisions, so a caller spread over the workers by the kernel is one caller, and an
  access-log entry that reaches one worker is joined to a decision another made. Each
  worker numbers its own policy sections; the hub maps each worker's numbers onto one
  numbering, equal sections (every worker reads the same file) onto one number.
  Actions go to every worker (each applies them to its own enforcer, so a block holds
  in all of them without Redis); the first connected worker also gets the metric
  changes and logs and counts the actions (the control plane sums over workers, so
  they must be counted once). Runs until SIGTERM (the supervisor stops it last).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import selectors
import signal
import socket
import time
from typing import Any

from authz.detect.events import Action
from authz.detect.remote import MAX_FRAME, MetricChange, decode_items, frame
from authz.detect.scorer import Scorer
from authz.telemetry.metrics import MemoryMetrics

log = logging.getLogger("authz.detect")

#: distinct sections kept (a reload adds one; the oldest not serving go first)
MAX_SECTIONS = 16


class ChildScorer(Scorer):
    """A scorer whose actions are collected for the serving processes to apply."""

    def __init__(self, metrics: MemoryMetrics) -> None:
        super().__init__(metrics)
        self.found: list[tuple[Any, ...]] = []

    def _emit(self, action: Action) -> None:
        self.found.append((*action[:-2], dict(action.evidence), action.monitor))


class Changes:
    """What changed in ``metrics`` since the last call (counters as increases)."""

    def __init__(self, metrics: MemoryMetrics) -> None:
        self.metrics = metrics
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}

    def __call__(self) -> list[MetricChange]:
        out: list[MetricChange] = []
        last = self._last
        for name, family in self.metrics.families.items():
            if family.kind not in ("counter", "gauge"):
                continue
            for labels, series in family.series.items():
                value = float(getattr(series, "value", 0.0))
                key = (name, labels)
                before = last.get(key, 0.0)
                if value == before:
                    continue
                last[key] = value
                change = value - before if family.kind == "counter" else value
                out.append(
                    (family.kind, name, family.description, family.label_names, labels, change)
                )
        return out


class Connection:
    """One serving process: its socket, what it sent that is not yet a whole frame,
    and its section numbers mapped onto the hub's."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.epochs: dict[int, int] = {}
        self.disabled = False


class Hub:
    """The scorer and the serving processes it answers (see the module docstring)."""

    def __init__(self) -> None:
        self.metrics = MemoryMetrics()
        self.scorer = ChildScorer(self.metrics)
        self.changes = Changes(self.metrics)
        #: the child's own CPU, for the serving processes' metrics (what scoring costs)
        self._cpu = self.metrics.counter(
            "authz_detect_scorer_cpu_seconds_total", "CPU time of the scoring process"
        ).labels()
        self._spent = time.process_time()
        self.connections: list[Connection] = []
        #: distinct sections, oldest first, and the hub's number of each
        self._sections: list[tuple[Any, int]] = []
        self._next = 0

    # -- connections ---------------------------------------------------------------

    def add(self, sock: socket.socket) -> Connection:
        conn = Connection(sock)
        self.connections.append(conn)
        return conn

    def remove(self, conn: Connection) -> None:
        with contextlib.suppress(ValueError):
            self.connections.remove(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def received(self, conn: Connection, data: bytes) -> bool:
        """Take bytes from ``conn``; False when it sent a bad frame (drop it)."""
        buffer = conn.buffer
        buffer += data
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if not 1 <= size <= MAX_FRAME:
                log.error("detection child: a bad frame (%d bytes)", size)
                return False
            if len(buffer) < 4 + size:
                break
            body = bytes(buffer[4 : 4 + size])
            del buffer[: 4 + size]
            self.frame(conn, body[:1], body[1:])
        return True

    # -- frames ----------------------------------------------------------------------

    def frame(self, conn: Connection, kind: bytes, payload: bytes) -> None:
        scorer = self.scorer
        if kind == b"P":
            self.control(conn, pickle.loads(payload))
            return
        if kind != b"I":
            return
        scorer.queue.extend(decode_items(payload, conn.epochs))
        scorer.drain()
        now = time.process_time()
        self._cpu.inc(now - self._spent)
        self._spent = now
        found, scorer.found = scorer.found, []
        primary = self.connections[0] if self.connections else conn
        for other in list(self.connections):
            answer = other is conn
            counts = other is primary  # (it gets the metric changes of every batch)
            if not (answer or found or counts):
                continue
            message = (found, self.changes() if counts else [], counts, answer)
            try:
                other.sock.sendall(frame(b"A", pickle.dumps(message, pickle.HIGHEST_PROTOCOL)))
            except OSError:
                self.remove(other)

    def control(self, conn: Connection, message: tuple[Any, ...]) -> None:
        """A section message: the proposals and the one serving (or ``disable``)."""
        scorer = self.scorer
        if message[0] == "disable":
            conn.disabled = True
            if all(c.disabled for c in self.connections):
                scorer.disable()
            return
        conn.disabled = False
        _, epochs, applied, _ = message
        conn.epochs = {epoch: self._number(section) for epoch, section in epochs.items()}
        if applied in conn.epochs and (scorer.config is None or len(self.connections) == 1):
            # its own child follows its worker; a shared one takes the first section
            # and then whatever section each item carries
            number = conn.epochs[applied]
            if number != scorer._epoch:
                scorer._apply(number)

    def _number(self, section: Any) -> int:
        for known, number in self._sections:
            if known == section:
                return number
        self._next += 1
        number = self._next
        self._sections.append((section, number))
        self.scorer._epochs[number] = section
        while len(self._sections) > MAX_SECTIONS:
            old = next((i for i, (_, n) in enumerate(self._sections) if n != self.scorer._epoch), 0)
            _, gone = self._sections.pop(old)
            self.scorer._epochs.pop(gone, None)
        return number


def serve_one(sock: socket.socket) -> int:
    """Score for the one serving process at the other end of ``sock``."""
    hub = Hub()
    conn = hub.add(sock)
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return 0  # the serving process closed: everything sent has been scored
        if not hub.received(conn, data):
            return 1


def serve_many(path: str) -> int:
    """Score for every serving process that connects to the Unix socket ``path``."""
    hub = Hub()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)  # only this user's workers
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for key, _ in selector.select(timeout=0.5):
                if key.data is None:
                    sock, _ = listener.accept()
                    selector.register(sock, selectors.EVENT_READ, hub.add(sock))
                    continue
                conn: Connection = key.data
                try:
                    data = conn.sock.recv(1 << 20)
                except OSError:
                    data = b""
                if not data or not hub.received(conn, data):
                    selector.unregister(conn.sock)
                    hub.remove(conn)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m authz.detect.child")
    parser.add_argument("fd", nargs="?", type=int, help="a socket inherited from the server")
    parser.add_argument("--listen", metavar="PATH", help="a Unix socket for every worker")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # the serving process (or the supervisor) decides when this one stops: a Ctrl-C
    # or a reload signal sent to the whole process group is not for it
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if args.listen:
        return serve_many(args.listen)
    if args.fd is None:
        parser.error("give FD or --listen PATH")
    sock = socket.socket(fileno=args.fd)
    try:
        return serve_one(sock)
    except (BrokenPipeError, ConnectionError):
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    raise SystemExit(main())
