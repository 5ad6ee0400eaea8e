"""What every rate-limit store does: decide a set of items at once, all or nothing.

An :class:`Item` is one bucket of one rule for one request. A store decides all
the items of a decision together: either every enforced item admits and every
admitting item is charged, or nothing is charged (a request that one rule
denies does not use up another rule's quota). Shadow items never block the
others; they are charged when they admit and the request is admitted.

Two kinds of bucket:

- ``GCRA`` (the generic cell rate algorithm, a token bucket kept as one
  number): ``interval`` seconds per token, ``capacity`` tokens at once. The
  state is the theoretical arrival time (TAT); a request is admitted iff
  ``max(TAT, now) + interval - capacity * interval <= now``. Smooth: in any
  window of length ``w`` at most ``capacity + w / interval`` requests are
  admitted, wherever the window starts (no burst at window edges).
- ``LEASE`` (concurrency caps): at most ``capacity`` leases of ``interval``
  seconds each are held at once; a lease ends when it expires.

``SYNC`` items are used by batched counting only: charge ``cost`` tokens
unconditionally and report the bucket's state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol

GCRA = 0
LEASE = 1
SYNC = 2

#: Float slack when comparing times (GCRA arithmetic on seconds).
EPSILON = 1e-9


class Item(NamedTuple):  # tuples: built on every decision, so cheap to build
    key: str
    mode: int  # GCRA | LEASE | SYNC
    interval: float  # GCRA: seconds per token; LEASE: lease seconds
    capacity: int  # GCRA: burst; LEASE: concurrent leases
    shadow: bool = False
    cost: int = 1


class Outcome(NamedTuple):
    allowed: bool
    remaining: int  # tokens (or free leases) left after this request
    reset: float  # seconds until the bucket is full again (every lease free)
    retry_after: float = 0.0  # seconds until this item would admit (0 when allowed)


class StoreUnavailable(Exception):
    """The store cannot be reached (or is in its back-off after a failure)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Store(Protocol):
    """A place where buckets live: in-process or shared."""

    name: str

    async def acquire(self, items: Sequence[Item]) -> list[Outcome]:
        """Decide ``items`` together, all or nothing; raise StoreUnavailable."""

    async def release(self, items: Sequence[Item]) -> None:
        """Give back what ``acquire`` charged for ``items`` (another store denied)."""


def gcra(
    tat: float, now: float, interval: float, capacity: int, cost: int = 1
) -> tuple[bool, float, Outcome]:
    """One GCRA decision: (admitted, the new TAT to store if admitted, outcome)."""
    if tat < now:
        tat = now
    new_tat = tat + interval * cost
    allow_at = new_tat - interval * capacity
    if allow_at <= now + EPSILON * interval:
        remaining = math.floor((now - allow_at) / interval + EPSILON)
        return True, new_tat, Outcome(True, max(remaining, 0), new_tat - now)
    return False, tat, Outcome(False, 0, tat - now, allow_at - now)
