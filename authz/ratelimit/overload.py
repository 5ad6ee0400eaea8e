"""Overload: when to shed, by priority class.

Three signals, the strongest wins:

- **Decisions in flight** in this process (counted by the engine, see
  :attr:`authz.stages.Shared.in_flight`): above ``background_at`` the
  ``background`` routes are shed, above ``normal_at`` the ``normal`` ones too.
  A decision is in flight while the engine works on it, including its waits
  on Redis or a JWKS fetch: it rises when a dependency slows down or the
  process falls behind.
- **The operator's signal file**: while it exists, shed what it names
  (``background``, the default for an empty file, or ``normal``). Checked at
  most every :data:`SIGNAL_CHECK_INTERVAL` seconds, so it costs one ``stat``
  per interval, not per request; works for every worker and replica that sees
  the file (a shared volume or a ConfigMap).

- **Adaptive** (``adaptive:``): the upstream's health from Envoy's access-log feed
  and the decisions in flight, through a gradient concurrency limit
  (:mod:`authz.ratelimit.adaptive`).

``critical`` routes are never shed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from authz.policy.ratelimit_config import OverloadConfig
from authz.telemetry.metrics import Counter, MemoryMetrics, Metrics

if TYPE_CHECKING:
    from authz.ratelimit.adaptive import AdaptiveShaper

log = logging.getLogger("authz.ratelimit")

SIGNAL_CHECK_INTERVAL = 0.25
#: Shedding level needed to shed a class: 1 sheds background, 2 also normal.
RANK = {"background": 1, "normal": 2, "critical": 3}


#: The priority classes that can be shed (the ``priority`` label of the shed counter).
SHEDDABLE = ("background", "normal")


class OverloadMonitor:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, metrics: Metrics | None = None
    ) -> None:
        self.clock = clock
        self._checked_at = float("-inf")
        self._signal_path: str | None = None
        self._signal_level = 0
        family = (metrics if metrics is not None else MemoryMetrics()).counter(
            "authz_shed_total", "requests shed under overload (503 overloaded)", ("priority",)
        )
        self._shed: dict[str, Counter] = {p: family.labels(p) for p in SHEDDABLE}
        #: the adaptive level's source, set when a policy asks for it (``adaptive:``)
        self.adaptive: AdaptiveShaper | None = None

    def counter(self, priority: str) -> Counter:
        """The pre-bound counter of requests shed on ``priority`` routes."""
        return self._shed[priority]

    @property
    def shed(self) -> dict[str, int]:
        """Requests shed so far, per priority (from the metrics)."""
        return {p: int(getattr(c, "value", 0)) for p, c in self._shed.items()}

    def level(self, in_flight: int, config: OverloadConfig) -> int:
        """0: shed nothing; 1: shed background; 2: shed normal and background.

        ``config`` is the policy's that built the calling check (a policy being
        loaded does not change what the serving one does)."""
        level = 0
        if config.normal_at is not None and in_flight > config.normal_at:
            level = 2
        elif config.background_at is not None and in_flight > config.background_at:
            level = 1
        if config.signal_file is not None:
            level = max(level, self._signal(config.signal_file))
        if config.adaptive is not None and self.adaptive is not None and level < 2:
            level = max(level, self.adaptive.level(in_flight, config.adaptive))
        return level

    def _signal(self, path: str) -> int:
        now = self.clock()
        if path == self._signal_path and now - self._checked_at < SIGNAL_CHECK_INTERVAL:
            return self._signal_level
        self._signal_path = path
        self._checked_at = now
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read(64).strip().lower()
        except FileNotFoundError:
            level = 0
        except OSError as exc:
            log.warning("overload signal file %s unreadable: %s", path, exc)
            level = self._signal_level
        else:
            level = 2 if text.startswith("normal") else 1
        if level != self._signal_level:
            names = {0: "nothing", 1: "background routes", 2: "normal and background routes"}
            log.warning("overload signal %s: shedding %s", path, names[level])
            self._signal_level = level
        return level

    def stats(self) -> dict[str, int]:
        shed = self.shed
        return {"shed_background": shed["background"], "shed_normal": shed["normal"]}
