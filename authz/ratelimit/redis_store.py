"""The shared store: Redis, one atomic Lua script per decision, one round trip.

Every item of a decision goes to one ``EVALSHA`` of
:data:`~authz.ratelimit.redis_scripts.ACQUIRE`: the script
reads the buckets, decides all or nothing, and writes the admitted ones, so two
replicas never both take the last token. Time is Redis's own clock
(``TIME``), so replicas with skewed clocks still agree; tests may pass ``now``.
Buckets expire in Redis when they are full again (``PX``), so Redis holds only
keys that carry state.

Keys are ``<prefix><rule>:<blake2b of the key values>``: no subject, address
or header value is stored in clear.

Decisions made at the same moment share the network, not the atomicity: a
call made while another is on the wire waits for the next turn of the event
loop and goes out in one pipelined write with the others waiting then (still
one ``EVALSHA`` per decision, each atomic). Alone, a call goes out at once.

Connections come from a bounded pool; every call has a deadline. After
:data:`FAILURES_TO_OPEN` failures in a row the store is *down*: calls fail at
once (no waiting on timeouts) for ``retry_interval``, then one call probes
Redis again; the first success ends the outage. Each rule decides what a
failure means (deny 503, or limit locally), see :mod:`authz.ratelimit.stage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from authz.policy.ratelimit_config import RedisStoreConfig
from authz.ratelimit.base import Item, Outcome, StoreUnavailable
from authz.ratelimit.redis_scripts import ACQUIRE, RELEASE
from authz.redis_connect import Client, close, connect
from authz.telemetry.metrics import MemoryMetrics, Metrics

log = logging.getLogger("authz.ratelimit")

FAILURES_TO_OPEN = 3
MAX_PIPELINE = 64  # decisions in one pipelined write at most
#: A call waiting for the next pipelined write: (script, keys, args, its result).
Queued = tuple[Any, list[str], list[Any], "asyncio.Future[Any]"]
_US = 1_000_000


class RedisStore:
    """Buckets in Redis, shared by every process that names the same server and prefix.

    A runtime (:mod:`authz.runtime`): building it opens nothing (the pool connects on
    the first call); :meth:`aclose` closes the pool's connections. Its counters are in
    the metrics, labelled with the store's name (names come from the policy file).
    """

    def __init__(
        self,
        config: RedisStoreConfig,
        *,
        now: Callable[[], float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._now = now  # None: Redis's clock (TIME); tests inject one
        self._monotonic = monotonic
        self.deployment = config.deployment
        self.cluster = self.deployment.kind == "cluster"
        self.client: Client = connect(
            self.deployment, timeout=config.timeout, pool_size=config.pool_size
        )
        self._acquire = self.client.register_script(ACQUIRE)
        self._release = self.client.register_script(RELEASE)
        self._nonce = f"{os.getpid():x}.{os.urandom(3).hex()}."
        self._on_the_wire = 0
        self._queued: list[Queued] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._counter = itertools.count(1)
        # outage state
        self._failures = 0
        self.down_since: float | None = None
        self._retry_at = 0.0
        self._probing = False
        m, by = metrics if metrics is not None else MemoryMetrics(), ("store",)
        self._calls = m.counter(
            "authz_ratelimit_redis_calls_total", "calls made to a Redis store", by
        ).labels(self.name)
        self._errors = m.counter(
            "authz_ratelimit_redis_errors_total", "Redis calls that failed or timed out", by
        ).labels(self.name)
        self._skipped = m.counter(
            "authz_ratelimit_redis_refused_total",
            "calls refused at once while the store is down",
            by,
        ).labels(self.name)
        self._outages = m.counter(
            "authz_ratelimit_redis_outages_total", "times the store was marked down", by
        ).labels(self.name)
        self._pipelined = m.counter(
            "authz_ratelimit_redis_pipelined_total", "calls that shared a write with others", by
        ).labels(self.name)
        self._up = m.gauge("authz_ratelimit_redis_up", "1 while the store is up, 0 while down", by)
        self._up.labels(self.name).set(1)

    @property
    def calls(self) -> int:
        return int(getattr(self._calls, "value", 0))

    @property
    def errors(self) -> int:
        return int(getattr(self._errors, "value", 0))

    @property
    def skipped(self) -> int:
        """Calls refused at once while the store was down."""
        return int(getattr(self._skipped, "value", 0))

    @property
    def outages(self) -> int:
        return int(getattr(self._outages, "value", 0))

    @property
    def pipelined(self) -> int:
        """Calls that shared a write with others."""
        return int(getattr(self._pipelined, "value", 0))

    # -- the two operations ----------------------------------------------------------

    async def acquire(self, items: Sequence[Item]) -> list[Outcome]:
        if self.cluster:
            groups = _by_slot(items)
            if len(groups) > 1:
                return await self._acquire_across_slots(items, groups)
        return await self._acquire_one(items)

    async def _acquire_across_slots(
        self, items: Sequence[Item], groups: list[list[int]]
    ) -> list[Outcome]:
        """A decision whose buckets live in several slots of a Cluster: one script per
        slot (each atomic), all at once; if any slot denied, the admissions the others
        made are given back (RELEASE), so the decision is still all or nothing, though
        not at one instant."""
        parts = await asyncio.gather(
            *(self._acquire_one([items[i] for i in group]) for group in groups),
            return_exceptions=True,
        )
        failed = next((p for p in parts if isinstance(p, BaseException)), None)
        out: list[Outcome | None] = [None] * len(items)
        for group, part in zip(groups, parts, strict=True):
            if isinstance(part, BaseException):
                continue
            for i, outcome in zip(group, part, strict=True):
                out[i] = outcome
        denied = any(
            o is not None and not o.allowed and not items[i].shadow for i, o in enumerate(out)
        )
        if failed is not None or denied:
            # give back what the admitting slots wrote (a denying slot wrote nothing;
            # mode 2 counts whatever the outcome, so it is not given back)
            give_back: list[Item] = []
            for group, part in zip(groups, parts, strict=True):
                if isinstance(part, BaseException):
                    continue
                pairs = list(zip(group, part, strict=True))
                if all(o.allowed or items[i].shadow for i, o in pairs):
                    give_back += [items[i] for i, o in pairs if o.allowed and items[i].mode != 2]
            if give_back:
                with contextlib.suppress(StoreUnavailable):
                    await self.release(give_back)
        if failed is not None:
            raise failed
        return [o for o in out if o is not None]

    async def _acquire_one(self, items: Sequence[Item]) -> list[Outcome]:
        args: list[Any] = [
            "" if self._now is None else int(self._now() * _US),
            self._nonce + str(next(self._counter)),
        ]
        for item in items:
            args += [
                item.mode,
                max(1, round(item.interval * _US)),
                item.capacity,
                1 if item.shadow else 0,
                item.cost,
            ]
        raw = await self._call(self._acquire, [item.key for item in items], args)
        out = []
        for i in range(len(items)):
            ok, remaining, reset, retry = raw[4 * i : 4 * i + 4]
            out.append(Outcome(bool(ok), int(remaining), int(reset) / _US, int(retry) / _US))
        return out

    async def release(self, items: Sequence[Item]) -> None:
        if self.cluster:
            groups = _by_slot(items)
            if len(groups) > 1:
                await asyncio.gather(*(self.release([items[i] for i in group]) for group in groups))
                return
        args: list[Any] = []
        for item in items:
            args += [item.mode, max(1, round(item.interval * _US)), item.cost]
        await self._call(self._release, [item.key for item in items], args)

    async def _run_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self._on_the_wire and not self.cluster:  # a Cluster's calls go to their nodes
            return await self._enqueue(script, keys, args)
        self._on_the_wire += 1
        try:
            return await script(keys=keys, args=args)
        finally:
            self._on_the_wire -= 1

    # -- outage handling ---------------------------------------------------------------

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        probe = False
        if self.down_since is not None:
            if self._probing or self._monotonic() < self._retry_at:
                self._skipped.inc()
                raise StoreUnavailable(f"redis store {self.name!r} is down", self._retry_left())
            self._probing = probe = True
        self._calls.inc()
        try:
            # wait_for, not asyncio.timeout: a check may run outside a task (the HTTP
            # transport runs it inline until it first waits; see authz.stages).
            result = await asyncio.wait_for(
                self._run_script(script, keys, args), self.config.timeout
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise StoreUnavailable(
                f"redis store {self.name!r}: {type(exc).__name__}: {exc}",
                self.config.retry_interval,
            ) from exc
        finally:
            if probe:
                self._probing = False
        if self._failures or self.down_since is not None:
            self._recovered()
        return result

    # -- coalescing concurrent calls -----------------------------------------------------

    def _enqueue(self, script: Any, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append((script, keys, args, future))
        return future

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        for start in range(0, len(batch), MAX_PIPELINE):
            task = asyncio.get_running_loop().create_task(
                self._send(batch[start : start + MAX_PIPELINE])
            )
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(
        self, batch: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]]
    ) -> None:
        self._on_the_wire += 1
        try:
            pipe = self.client.pipeline(transaction=False)
            for script, keys, args, _ in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
            for (script, keys, args, future), result in zip(batch, results, strict=True):
                if isinstance(result, NoScriptError):  # Redis restarted: load it, once
                    try:
                        result = await script(keys=keys, args=args)
                    except Exception as exc:  # handed to the caller
                        result = exc
                if future.done():
                    continue  # the caller's deadline passed
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            self._pipelined.inc(len(batch))
        except BaseException as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, Exception) else RedisConnectionError("cancelled")
                    )
            if not isinstance(exc, Exception):
                raise
        finally:
            self._on_the_wire -= 1

    def _retry_left(self) -> float:
        return max(self._retry_at - self._monotonic(), 0.0) or self.config.retry_interval

    def _failed(self, exc: BaseException) -> None:
        self._errors.inc()
        self._failures += 1
        now = self._monotonic()
        if self.down_since is None and self._failures >= FAILURES_TO_OPEN:
            self.down_since = now
            self._outages.inc()
            self._up.labels(self.name).set(0)
            log.warning(
                "ratelimit: redis store %r (%s) unreachable (%s: %s); each rule now fails "
                "closed or limits locally, as it says; retrying every %.1fs",
                self.name,
                self.deployment.describe(),
                type(exc).__name__,
                exc or "timeout",
                self.config.retry_interval,
            )
        if self.down_since is not None:
            self._retry_at = now + self.config.retry_interval

    def _recovered(self) -> None:
        if self.down_since is not None:
            log.warning(
                "ratelimit: redis store %r reachable again after %.1fs (%d calls refused)",
                self.name,
                self._monotonic() - self.down_since,
                self.skipped,
            )
        self._failures = 0
        self.down_since = None
        self._up.labels(self.name).set(1)

    @property
    def up(self) -> bool:
        return self.down_since is None

    def stats(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "calls": self.calls,
            "errors": self.errors,
            "refused_while_down": self.skipped,
            "outages": self.outages,
            "pipelined": self.pipelined,
        }

    async def start(self) -> None:
        """Nothing to begin: connections are opened by the first calls (bounded pool)."""
        return None

    async def aclose(self) -> None:
        """Close every connection of the pool (and wait for pipelined writes to end)."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await close(self.client)


def _by_slot(items: Sequence[Item]) -> list[list[int]]:
    """The items' indexes grouped by Cluster slot (in order of first appearance)."""
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key_slot(item.key.encode()), []).append(i)
    return list(groups.values())
