"""The bounded queue between Envoy's access-log stream and the response hub.

The stream handler (:mod:`authz.transport.als_server`) hands each message's entries
to :meth:`ResponseFeed.offer`: O(1) per entry, no translation, never waits. A drain
task translates them (the transport's function, so this module knows no protobuf)
and publishes each :class:`~authz.detect.events.ResponseObservation` on the hub, in
batches of :data:`DEFAULT_BATCH`, yielding to the event loop between batches so a
burst of log entries never holds a decision up for more than one batch.

Bounds and failure:

- The queue holds at most ``capacity`` entries; an offer beyond that drops the
  entries that do not fit and counts them (``authz_feed_entries_total{outcome=
  "dropped"}``). The stream is never slowed down: Envoy keeps logging, and its own
  buffer (``buffer_size_bytes``) is what backs up if this process stops reading.
- An entry that does not translate is counted (``invalid``) and skipped; a hub
  listener's error is logged by the hub. Nothing here is on a decision's path: a
  slow, broken or absent feed degrades detection and shaping, never a decision.

Counters (``authz_feed_entries_total`` by ``outcome``): ``joined`` (published with a
decision id), ``public`` (published without one: a route Envoy did not send to
ext_authz), ``dropped``, ``invalid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from authz.detect.events import RESPONSE_HUB, ResponseHub, ResponseObservation
from authz.telemetry.metrics import Counter, MemoryMetrics, Metrics

log = logging.getLogger("authz.feedback")

#: The :class:`~authz.stages.Shared` key of the process's feed.
FEED = "feedback.feed"
#: Entries held at most (about 1 KB each as Envoy sends them: ~64 MB at the bound).
DEFAULT_CAPACITY = 65_536
#: Entries translated and published before the drain yields to the event loop.
DEFAULT_BATCH = 256
OUTCOMES = ("joined", "public", "dropped", "invalid")

Translate = Callable[[Any], ResponseObservation]


class ResponseFeed:
    """Entries in, observations out to ``hub``; a runtime (``start`` begins the drain)."""

    name = FEED

    def __init__(
        self,
        hub: ResponseHub,
        translate: Translate,
        *,
        metrics: Metrics | None = None,
        capacity: int = DEFAULT_CAPACITY,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        if capacity < 1 or batch < 1:
            raise ValueError("the feed's capacity and batch must be at least 1")
        self.hub = hub
        self.capacity = capacity
        self.batch = batch
        self._translate = translate
        self._queue: deque[Any] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        family = (metrics if metrics is not None else MemoryMetrics()).counter(
            "authz_feed_entries_total", "Envoy access-log entries by outcome", ("outcome",)
        )
        self._counters: dict[str, Counter] = {o: family.labels(o) for o in OUTCOMES}
        self._joined = self._counters["joined"]
        self._public = self._counters["public"]
        self._dropped = self._counters["dropped"]
        self._invalid = self._counters["invalid"]

    @classmethod
    def of(cls, shared: Any, translate: Translate, **kwargs: Any) -> ResponseFeed:
        """The process's feed, registered in ``shared.runtimes`` (not started), publishing
        on the process's hub."""
        hub = shared.get(RESPONSE_HUB, ResponseHub)
        feed: ResponseFeed = shared.runtime(
            FEED, lambda: cls(hub, translate, metrics=shared.metrics, **kwargs)
        )
        return feed

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def counts(self) -> dict[str, int]:
        """Entries so far by outcome (from the metrics)."""
        return {o: int(getattr(c, "value", 0)) for o, c in self._counters.items()}

    def offer(self, entries: Sequence[Any]) -> int:
        """Queue ``entries`` (as many as fit); returns how many were taken. Never waits."""
        n = len(entries)
        if not n:
            return 0
        free = self.capacity - len(self._queue)
        if n > free:
            self._dropped.inc(n - max(free, 0))
            if free <= 0:
                return 0
            entries = entries[:free]
            n = free
        self._queue.extend(entries)
        self._wake.set()
        return n

    def drain_batch(self) -> int:
        """Translate and publish up to ``batch`` queued entries now; returns how many."""
        queue, translate, publish = self._queue, self._translate, self.hub.publish
        done = 0
        while queue and done < self.batch:
            entry = queue.popleft()
            done += 1
            try:
                observation = translate(entry)
            except Exception:
                self._invalid.inc()
                log.debug("access-log entry did not translate", exc_info=True)
                continue
            (self._joined if observation.decision_id else self._public).inc()
            publish(observation)
        return done

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                self.drain_batch()
                await asyncio.sleep(0)  # decisions go first between batches

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="als-feed")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._queue:
            log.info("access-log feed closed with %d entries not published", len(self._queue))
            self._queue.clear()
