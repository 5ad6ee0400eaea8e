"""The scoring process: ``python -m authz.detect.child FD`` (see :mod:`authz.detect.remote`).

Reads frames from the socket ``FD`` (inherited from the serving process), keeps a
plain :class:`~authz.detect.scorer.Scorer` configured with the sections it is sent,
scores each batch of items as it arrives and answers with the actions found and the
metric changes since the last answer. Exits when the socket closes (after scoring
what it has) or on a bad frame. It never writes anywhere else: the actions are
applied, logged and counted by the serving process.
"""

from __future__ import annotations

import logging
import pickle
import signal
import socket
import sys
import time
from typing import Any

from authz.detect.events import Action
from authz.detect.remote import MAX_FRAME, MetricChange, decode_items, frame
from authz.detect.scorer import Scorer
from authz.telemetry.metrics import MemoryMetrics

log = logging.getLogger("authz.detect")


class ChildScorer(Scorer):
    """A scorer whose actions are collected for the serving process to apply."""

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


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def serve(sock: socket.socket) -> int:
    metrics = MemoryMetrics()
    scorer = ChildScorer(metrics)
    changes = Changes(metrics)
    # the child's own CPU, for the serving process's metrics (what scoring costs)
    cpu = metrics.counter(
        "authz_detect_scorer_cpu_seconds_total", "CPU time of the scoring process"
    ).labels()
    clock = time.process_time
    spent = clock()
    while True:
        header = _read_exactly(sock, 4)
        if header is None:
            return 0  # the serving process closed: everything sent has been scored
        size = int.from_bytes(header, "big")
        if not 1 <= size <= MAX_FRAME:
            log.error("detection child: a bad frame (%d bytes)", size)
            return 1
        body = _read_exactly(sock, size)
        if body is None:
            return 0
        kind, payload = body[:1], body[1:]
        if kind == b"I":
            scorer.queue.extend(decode_items(payload))
            scorer.drain()
        elif kind == b"P":
            control(scorer, pickle.loads(payload))
            continue
        now = clock()
        cpu.inc(now - spent)
        spent = now
        found, scorer.found = scorer.found, []
        reply = pickle.dumps((found, changes()), protocol=pickle.HIGHEST_PROTOCOL)
        sock.sendall(frame(b"A", reply))


def control(scorer: Scorer, message: tuple[Any, ...]) -> None:
    """A section message: the proposals and the one serving (or ``disable``)."""
    if message[0] == "disable":
        scorer.disable()
        return
    _, epochs, applied, next_epoch = message
    scorer._epochs = dict(epochs)
    scorer._next_epoch = next_epoch
    if applied and applied != scorer._epoch:
        scorer._apply(applied)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # the serving process decides when this one stops (it closes the socket): a
    # Ctrl-C or a reload signal sent to the whole process group is not for it
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=int(args[0]))
    try:
        return serve(sock)
    except (BrokenPipeError, ConnectionError):
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    raise SystemExit(main())
