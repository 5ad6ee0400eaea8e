"""The lifecycle of long-lived state: one protocol, one owner.

A :class:`Runtime` is anything that holds state or background work beyond one
decision: rate-limit stores, JWKS caches, the inventory, the decision log's writer
(and later detectors and audit writers). It has exactly two lifecycle methods,
``start`` and ``aclose``; building it (at policy load) must not start anything: no
task created, no connection opened, no thread started. Building *registers* it with
a :class:`Runtimes`; whoever owns that registry starts it once the build succeeded.

:class:`Runtimes` owns a set of runtimes:

- :meth:`Runtimes.add` registers one (the same object twice: once), pending;
- :meth:`Runtimes.start` starts the pending ones in the order they were added; a
  runtime whose ``start`` raised stays pending (a later ``start`` retries it) and is
  closed by ``aclose`` all the same, since it may have started half of its work;
- :meth:`Runtimes.abandon` forgets the pending ones (the build that added them
  failed, or its policy was refused): they were never started, so nothing to close;
- :meth:`Runtimes.aclose` closes every runtime whose start was attempted, in reverse
  order; an error in one is logged and the others are still closed. Twice: once.

:class:`Together` groups runtimes that are independent of each other (the identity
providers of one policy) so that they start concurrently: one slow issuer does not
delay the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

log = logging.getLogger("authz.runtime")


@runtime_checkable
class Runtime(Protocol):
    """State with a lifecycle. ``start`` may be called again after it raised;
    ``aclose`` after a failed or cancelled ``start`` releases what it began."""

    async def start(self) -> None:
        """Begin background work (tasks, threads, connections). Called once built."""

    async def aclose(self) -> None:
        """Stop the background work and release resources."""


def _name(runtime: Runtime) -> str:
    return getattr(runtime, "name", None) or type(runtime).__name__


class Runtimes:
    """Starts runtimes in the order added; closes the started ones in reverse order."""

    def __init__(self) -> None:
        self._pending: dict[int, Runtime] = {}  # added, not started yet (insertion order)
        self._started: dict[int, Runtime] = {}  # start attempted (insertion order)
        self._succeeded: set[int] = set()

    def add(self, runtime: Runtime) -> Runtime:
        """Register ``runtime`` (no-op if it is registered already); returns it."""
        key = id(runtime)
        if key not in self._succeeded and key not in self._pending:
            self._pending[key] = runtime
        return runtime

    def __contains__(self, runtime: object) -> bool:
        return id(runtime) in self._pending or id(runtime) in self._started

    @property
    def pending(self) -> tuple[Runtime, ...]:
        return tuple(self._pending.values())

    @property
    def started(self) -> tuple[Runtime, ...]:
        """The runtimes started successfully, in start order."""
        return tuple(r for k, r in self._started.items() if k in self._succeeded)

    async def start(self) -> None:
        """Start every pending runtime, in order; the first failure propagates (the
        runtimes before it stay started, it and the ones after it stay pending)."""
        while self._pending:
            key, runtime = next(iter(self._pending.items()))
            self._started.setdefault(key, runtime)
            await runtime.start()
            self._succeeded.add(key)
            del self._pending[key]

    def abandon(self) -> tuple[Runtime, ...]:
        """Forget the runtimes added but never started; returns them."""
        dropped = tuple(r for k, r in self._pending.items() if k not in self._started)
        self._pending.clear()  # one whose start failed is still closed by aclose
        return dropped

    async def aclose(self) -> None:
        """Close, in reverse order, every runtime whose start was attempted; log errors."""
        closing = list(self._started.values())
        self._started.clear()
        self._pending.clear()
        self._succeeded.clear()
        for runtime in reversed(closing):
            try:
                await runtime.aclose()
            except Exception:  # one broken runtime must not keep the others open
                log.exception("closing %s failed", _name(runtime))


class Together:
    """Runtimes started and closed concurrently, as one (independent members only)."""

    def __init__(self, members: Iterable[Runtime], name: str = "together") -> None:
        self.members = tuple(members)
        self.name = name

    async def start(self) -> None:
        await asyncio.gather(*(m.start() for m in self.members))

    async def aclose(self) -> None:
        results = await asyncio.gather(*(m.aclose() for m in self.members), return_exceptions=True)
        for member, result in zip(self.members, results, strict=True):
            if isinstance(result, Exception):
                log.error("closing %s failed: %r", _name(member), result)


class Stateless:
    """A runtime with nothing to start or stop (state that only lives in memory)."""

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
