"""Blocks and revocations shared across workers and replicas through one Redis.

Every process keeps the whole table in memory (its *mirror*), so the request path
stays a dict lookup; Redis is where changes meet:

- an entry is the key ``<prefix>e:<response>|<kind>|<target>`` holding its JSON,
  with a TTL (``PX``) of its remaining life: Redis forgets what has expired;
- every add and lift is also appended to the stream ``<prefix>log`` (``XADD``,
  capped with ``MAXLEN ~``); each process reads it with a blocking ``XREAD`` on a
  connection of its own and applies what others did, within a round trip;
- on start and after every reconnect the mirror is *resynced*: the stream's last id
  is read first, then every entry key (``SCAN`` + ``MGET``), then the stream is read
  from that id on (a change made during the scan is applied twice, which is harmless:
  adds and lifts are idempotent). If the stream this process was reading is gone,
  Redis lost its data (restarted without persistence): the mirror is written back
  instead of being emptied, so a Redis restart does not lift every block.

Changes this process makes are applied to its mirror at once and queued for Redis;
a writer task sends them (pipelined) and keeps them queued while Redis is down, so an
action taken during an outage reaches the others when it is back (before the resync,
so the resync does not undo it).

While Redis is unreachable the store is *down*: with ``on_error: allow`` the mirror
is kept and enforced as it was; with ``deny`` the enforcer refuses every request
(503 ``enforcement_unavailable``) until the resync after the reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from authz.policy.enforcement_config import EnforcementRedisConfig
from authz.redis_connect import Client, connect
from authz.respond.table import Entry, Table
from authz.telemetry.metrics import MemoryMetrics, Metrics

log = logging.getLogger("authz.respond")

#: Stream entries kept (approximately): more than any reader falls behind between reads.
STREAM_MAXLEN = 100_000
#: How long one XREAD blocks waiting for changes (then it asks again).
BLOCK_MS = 1000
SCAN_COUNT = 1000

#: One queued change: ("add", entry) or ("lift", entry).
Change = tuple[str, Entry]


class RedisSync:
    """Keeps a :class:`Table` in step with Redis (see the module docstring)."""

    def __init__(
        self,
        config: EnforcementRedisConfig,
        table: Table,
        *,
        metrics: Metrics | None = None,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.config = config
        self.table = table
        self.deployment = config.deployment
        self.cluster = self.deployment.kind == "cluster"
        prefix = config.key_prefix
        if self.cluster and "{" not in prefix:
            # every key in one slot: the resync's SCAN + MGET and the stream meet there
            prefix = "{" + prefix + "}"
        self.prefix = prefix
        self.stream = f"{prefix}log"
        self._on_state = on_state
        self._pending: deque[Change] = deque()
        #: detectors' actions (JSON) for the shared list of recent actions
        self._actions: deque[str] = deque(maxlen=10_000)
        self.actions_key = f"{prefix}actions"
        self.max_actions = 1000
        #: changes held for Redis while it is down, at most (then the oldest go)
        self.max_pending = max(table.max_entries, 1024)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._writer_client: Client | None = None
        self._reader_client: Client | None = None
        self._last_id = "0-0"
        self._closing = False
        self.up = False
        self.synced = False
        self.resyncs = 0
        self.down_since: float | None = None
        m = metrics if metrics is not None else MemoryMetrics()
        self._up_gauge = m.gauge(
            "authz_enforcement_store_up", "1 while the shared enforcement store is reachable"
        ).labels()
        self._resyncs = m.counter(
            "authz_enforcement_resyncs_total", "full reloads of the mirror from Redis"
        ).labels()
        self._errors = m.counter(
            "authz_enforcement_store_errors_total",
            "Redis calls of the enforcement store that failed",
        ).labels()
        self._dropped = m.counter(
            "authz_enforcement_store_dropped_total",
            "changes dropped from the queue for Redis while it was down (oldest first)",
        ).labels()
        self._applied = m.counter(
            "authz_enforcement_remote_changes_total", "changes read from the shared stream"
        ).labels()

    # -- writing ------------------------------------------------------------------------

    def publish(self, op: str, entry: Entry) -> None:
        """Queue an add or a lift for Redis (any thread; the writer sends it)."""
        if len(self._pending) >= self.max_pending:
            # Redis has been away long enough for this many changes: the oldest go
            # (this process still enforces them; the others miss them), counted
            self._pending.popleft()
            self._dropped.inc()
        self._pending.append((op, entry))
        self._wakeup()  # not started: sent once it is

    def publish_action(self, record: str) -> None:
        """Queue a detector's action (JSON) for the list every replica reads."""
        self._actions.append(record)
        self._wakeup()

    def _wakeup(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    async def recent_actions(self, limit: int) -> list[str] | None:
        """The newest ``limit`` actions of every replica (JSON), None if Redis cannot say."""
        client = self._writer_client
        if client is None or not self.up:
            return None
        try:
            raw = await asyncio.wait_for(
                client.lrange(self.actions_key, 0, max(limit, 1) - 1),
                self.config.timeout * 4 + 0.2,
            )
        except (RedisError, OSError, TimeoutError):
            self._errors.inc()
            return None
        return [_text(x) for x in raw]

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _flush(self) -> None:
        """Send every queued change (raises RedisError/OSError: the rest stay queued)."""
        client = self._writer_client
        assert client is not None
        while self._pending:
            batch = [self._pending[i] for i in range(min(len(self._pending), 256))]
            pipe = client.pipeline(transaction=False)
            now = time.time()
            for op, entry in batch:
                key = f"{self.prefix}e:{entry.key}"
                if op == "add":
                    ttl_ms = max(int((entry.expires - now) * 1000), 1)
                    pipe.set(key, entry.to_json(), px=ttl_ms)
                else:
                    pipe.delete(key)
                pipe.xadd(
                    self.stream,
                    {"op": op, "key": entry.key, "entry": entry.to_json()},
                    maxlen=STREAM_MAXLEN,
                    approximate=True,
                )
            await asyncio.wait_for(pipe.execute(), self.config.timeout * 4 + 0.2)
            for _ in batch:
                self._pending.popleft()
        if self._actions:
            actions = list(self._actions)
            pipe = client.pipeline(transaction=False)
            pipe.lpush(self.actions_key, *actions)
            pipe.ltrim(self.actions_key, 0, self.max_actions - 1)
            await asyncio.wait_for(pipe.execute(), self.config.timeout * 4 + 0.2)
            for _ in actions:
                self._actions.popleft()

    async def _writer(self) -> None:
        assert self._wake is not None
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if not self.up:
                continue  # the reader flushes on reconnect
            try:
                await self._flush()
            except (RedisError, OSError, TimeoutError) as exc:
                self._errors.inc()
                log.warning("enforcement store: write failed (%s); kept queued", exc)
                self._mark_down(exc)

    # -- reading ------------------------------------------------------------------------

    async def resync(self) -> None:
        """Send what is queued, then reload the mirror from Redis (see the module doc)."""
        writer, reader = self._writer_client, self._reader_client
        assert writer is not None and reader is not None
        timeout = self.config.timeout * 20 + 1.0
        await asyncio.wait_for(writer.ping(), self.config.timeout * 4 + 0.2)
        last = await asyncio.wait_for(writer.xrevrange(self.stream, count=1), timeout)
        if not last and self._last_id != "0-0":
            # the stream we read is gone: Redis lost its data (a restart without
            # persistence). What we hold is the best there is: give it back.
            log.warning(
                "enforcement store: redis lost its state; re-seeding it with %d entries",
                len(self.table),
            )
            self._pending.extend(("add", e) for e in self.table.values())
        await self._flush()
        last = await asyncio.wait_for(writer.xrevrange(self.stream, count=1), timeout)
        last_id = _text(last[0][0]) if last else "0-0"
        entries: list[Entry] = []
        cursor: Any = 0
        pattern = f"{self.prefix}e:*"
        # on a Cluster every entry is in the stream's slot: scan the node holding it
        where: dict[str, Any] = {}
        if isinstance(writer, RedisCluster):
            await asyncio.wait_for(writer.initialize(), timeout)
            where["target_nodes"] = writer.get_node_from_key(self.stream)
        while True:
            cursor, keys = await asyncio.wait_for(
                writer.scan(cursor, match=pattern, count=SCAN_COUNT, **where), timeout
            )
            if isinstance(cursor, dict):  # a Cluster answers {node: cursor}
                cursor = next(iter(cursor.values()), 0)
            if keys:
                values = await asyncio.wait_for(writer.mget(keys), timeout)
                for value in values:
                    if value is None:
                        continue
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        entries.append(Entry.from_json(value))
            if not cursor:
                break
        self.table.replace_all(entries)
        self._last_id = last_id
        self.synced = True
        self.resyncs += 1
        self._resyncs.inc()
        self._mark_up()

    async def _reader(self) -> None:
        retry = self.config.retry_interval
        while not self._closing:
            try:
                if not self.up:
                    await self.resync()
                reader = self._reader_client
                assert reader is not None
                answer: Any = await reader.xread(
                    {self.stream: self._last_id}, count=500, block=BLOCK_MS
                )
                for _stream, messages in answer or ():
                    for message_id, fields in messages:
                        self._last_id = _text(message_id)
                        self._apply(fields)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._errors.inc()
                self._mark_down(exc)
                await asyncio.sleep(retry)
            except Exception:  # a bug must not end the subscription
                log.exception("enforcement store: reader failed")
                self._mark_down(RuntimeError("reader failed"))
                await asyncio.sleep(retry)

    def _apply(self, fields: dict[Any, Any]) -> None:
        values = {_text(k): v for k, v in fields.items()}
        op = _text(values.get("op", b""))
        try:
            entry = Entry.from_json(values["entry"])
        except (KeyError, ValueError, TypeError):
            return
        self._applied.inc()
        if op == "add":
            self.table.put(entry)
        elif op == "lift":
            current = self.table.get(entry.key)
            # a lift removes what it lifted, not a newer add of the same target
            if current is not None and current.created <= entry.created:
                self.table.remove(entry.key)

    # -- state --------------------------------------------------------------------------

    def _mark_down(self, exc: BaseException) -> None:
        if self.up or self.down_since is None:
            if self.down_since is None:
                self.down_since = time.monotonic()
            if self.up:
                log.warning(
                    "enforcement store: redis unreachable (%s: %s); on_error=%s",
                    type(exc).__name__,
                    exc or "timeout",
                    self.config.on_error,
                )
        self.up = False
        self._up_gauge.set(0)
        if self._on_state is not None:
            self._on_state(False)

    def _mark_up(self) -> None:
        if self.down_since is not None and self.resyncs > 1:
            log.warning(
                "enforcement store: redis reachable again after %.1fs; mirror resynced "
                "(%d entries)",
                time.monotonic() - self.down_since,
                len(self.table),
            )
        self.down_since = None
        self.up = True
        self._up_gauge.set(1)
        if self._on_state is not None:
            self._on_state(True)
        if (self._pending or self._actions) and self._wake is not None:
            self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, resync once (a failure leaves the store down: the reader retries),
        and start the reader and the writer."""
        if self._tasks:
            return
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        timeout = self.config.timeout
        self._writer_client = connect(
            self.deployment, timeout=timeout * 4, socket_timeout=timeout * 4 + 0.2, pool_size=4
        )
        self._reader_client = connect(
            self.deployment,
            timeout=timeout * 4,
            socket_timeout=BLOCK_MS / 1000 + timeout * 4 + 0.5,
            pool_size=2,
        )
        try:
            await self.resync()
        except (RedisError, OSError, TimeoutError) as exc:
            self._errors.inc()
            self._mark_down(exc)
            log.warning(
                "enforcement store: redis unreachable at start (%s); on_error=%s; retrying",
                exc or type(exc).__name__,
                self.config.on_error,
            )
        self._tasks = [
            self._loop.create_task(self._reader(), name="enforcement-reader"),
            self._loop.create_task(self._writer(), name="enforcement-writer"),
        ]
        if self._pending:
            self._wake.set()

    async def aclose(self) -> None:
        self._closing = True
        for task in self._tasks:
            # cancelled again until it ends: a cancellation can be lost in a call
            # that finishes at the same moment (asyncio.wait_for in Python 3.11)
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
        self._tasks = []
        if self.up and (self._pending or self._actions) and self._writer_client is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self._flush()  # last changes out before we go
        for client in (self._writer_client, self._reader_client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.aclose(), 1.0)
        self._writer_client = self._reader_client = None
        self._loop = None

    def stats(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "synced": self.synced,
            "resyncs": self.resyncs,
            "pending": len(self._pending),
            "last_id": self._last_id,
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
