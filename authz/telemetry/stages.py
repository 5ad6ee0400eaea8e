"""Per-stage latency: ``authz_stage_latency_ms{stage}``, a histogram per named stage.

Only when telemetry counts (``--metrics`` or ``--otlp-metrics``): the service sets
:attr:`authz.stages.Shared.step_probe` to :meth:`StageLatency.wrap`, and a policy
binds each stage's step through it at load. With telemetry off the probe is None and
the steps are the stages' own: nothing is timed.

The wrapped step of a synchronous stage costs two ``perf_counter`` calls and one
observation; an asynchronous one is awaited inside a small coroutine so that its
time includes the await. A deny (the stage raised) is timed too. The label is the
stage's *name* from the registry (a fixed, small set), bound once per stage at load.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from authz.stages import Context, Stage, Step, step_of
from authz.telemetry.metrics import Metrics

#: a stage's time in milliseconds: most take microseconds, a JWKS fetch or a Redis
#: call milliseconds
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 100, 1000)


class StageLatency:
    """Binds a stage's step to a timing wrapper observing its stage's histogram."""

    def __init__(self, metrics: Metrics) -> None:
        self._family = metrics.histogram(
            "authz_stage_latency_ms",
            "time each named stage of the pipeline took, deny included (ms)",
            ("stage",),
            STAGE_BUCKETS,
        )

    def wrap(self, stage: Stage) -> Step:
        """The step the engine calls for ``stage``: its own, timed."""
        return _timed(step_of(stage), self._family.labels(stage.name).observe)


def _timed(step: Step, observe: Callable[[float], None]) -> Step:
    clock = time.perf_counter

    async def finish(pending: Awaitable[None], started: float) -> None:
        try:
            await pending
        finally:
            observe((clock() - started) * 1000)

    def timed(ctx: Context) -> Awaitable[None] | None:
        started = clock()
        try:
            pending = step(ctx)
        except BaseException:
            observe((clock() - started) * 1000)
            raise
        if pending is None:
            observe((clock() - started) * 1000)
            return None
        return finish(pending, started)

    return timed
