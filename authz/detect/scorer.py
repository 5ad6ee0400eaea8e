"""The background scorer: drains the observation queue, runs the detectors, acts.

One :class:`Scorer` per process, kept in :class:`~authz.stages.Shared` under
:data:`SHARED_NAME` and registered as a runtime (``shared.runtime``): building a
policy proposes its section (:meth:`Scorer.propose`: thresholds, route templates,
applied once that policy serves) and starts nothing; the service starts it
(:meth:`Scorer.start`: one asyncio task), :meth:`Scorer.aclose` stops it.

- The request path calls :meth:`Scorer.offer` (the ``detect`` stage), the access-log
  feed :meth:`Scorer.on_response`: both append to one bounded deque; when it is full
  the item is dropped, counted (``authz_detect_dropped_total``), never waited for.
- Every ``interval`` (default 200 ms) the task drains the queue in slices of
  :data:`SLICE` items, yielding between slices: a backlog never stalls decisions.
- A response joined to its observation by decision id (a bounded table of recent
  observations) reaches the detectors' ``respond``; one with decision id "" is a
  request on a public route that the check never saw: it counts as a request.
- A finding becomes an :class:`~authz.detect.events.Action` (the detector's
  response, TTL, reason and mode, the evidence with the caller's current window)
  unless the warm-up is still running (honeypots excepted) or an action as strong
  on the same target is still in force (deduplicated; a block passes a log). The
  action goes to ``shared.get(ACTION_SINK, LogOnlySink)``, looked up when acting
  (the enforcer registers itself there when a policy is built), is logged on
  ``authz.detect`` and counted by detector, response and mode (findings by detector).

Time is the observations' own (traffic time): replays and tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable

from authz.detect.detectors import Detector, Finding
from authz.detect.events import (
    REASON_OF,
    RESPONSES,
    Action,
    ActionSink,
    Observation,
    ResponseObservation,
)
from authz.detect.features import FeatureStore, identity_key
from authz.detect.intake import (
    LogOnlySink,
    NamedRoute,
    Pending,
    feed_observation,
    param_pattern,
    scored_observation,
)
from authz.detect.registry import build_detectors, configs_by_name, same_shape
from authz.detect.tables import LruTable
from authz.paths import path_shape
from authz.policy.detection_config import DetectionConfig, DetectorConfig
from authz.ratelimit.keys import client_address
from authz.telemetry.metrics import Metrics

log = logging.getLogger("authz.detect")

SHARED_NAME = "detect"
_new = tuple.__new__
SLICE = 1024  # items processed between two yields to the event loop
JOIN_CAPACITY = 65_536  # recent observations kept to join the feed's entries to
EARLY = 4096  # feed entries kept waiting for their decision
#: a shorter TTL than this is not deduplicated on (log actions are kept this long)
MIN_IN_FORCE = 60.0
#: proposed sections kept (a reload built but not yet serving)
MAX_EPOCHS = 4


class Scorer:
    """The detection runtime (see the module docstring)."""

    name = "detect"

    def __init__(
        self,
        metrics: Metrics,
        *,
        sink: Callable[[], ActionSink] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self._sink = sink or LogOnlySink
        self._clock = clock
        self.queue: collections.deque[Observation | ResponseObservation | Pending] = (
            collections.deque()
        )
        self.bound = 65_536
        self.interval = 0.2
        self.config: DetectionConfig | None = None
        self.detectors: tuple[Detector, ...] = ()
        self._by_name: dict[str, DetectorConfig] = {}
        self._params: dict[str, re.Pattern[str]] = {}
        self.store: FeatureStore | None = None
        self._joins: LruTable[Observation] = LruTable("joins", JOIN_CAPACITY, metrics)
        #: feed entries before their decision (a shared child: another worker's batch)
        self._early: LruTable[ResponseObservation] = LruTable("early", EARLY, metrics)
        #: target -> (until, strength of the response in force)
        self._in_force: LruTable[tuple[float, int]] = LruTable("in_force", 100_000, metrics)
        self._first: float | None = None
        #: epoch -> (section, routes) proposed by a build; the one applied
        self._epochs: dict[int, tuple[DetectionConfig, tuple[NamedRoute, ...]]] = {}
        self._epoch = 0
        self._next_epoch = 0
        #: whether the access-log feed has sent anything (until then nothing is joined)
        self._feed = False
        self._task: asyncio.Task[None] | None = None
        self.dropped = metrics.counter(
            "authz_detect_dropped_total", "observations dropped: the detection queue was full"
        ).labels()
        self._processed = metrics.counter(
            "authz_detect_observations_total", "observations and feed entries scored", ("kind",)
        )
        self._seen_request = self._processed.labels("request").inc
        self._seen_response = self._processed.labels("response").inc
        self._unjoined = metrics.counter(
            "authz_detect_unjoined_total", "feed entries whose decision was not found"
        ).labels()
        self._actions = metrics.counter(
            "authz_detect_actions_total",
            "automatic actions by detector, response and mode",
            ("detector", "response", "mode"),
        )
        by = ("detector",)
        self._findings = metrics.counter("authz_detect_findings_total", "detections", by)
        self._suppressed = metrics.counter(
            "authz_detect_suppressed_total",
            "findings not actioned: warm-up, or an action on the target still in force",
            ("why",),
        )
        self._errors = metrics.counter(
            "authz_detect_errors_total", "detector or sink errors (logged)"
        ).labels()

    # -- configuration (at policy build: nothing starts) -------------------------

    def propose(self, config: DetectionConfig, routes: Iterable[NamedRoute] = ()) -> int:
        """A policy being built brings its section: returns the epoch its stage tags its
        observations with. The first is applied at once; a later one only when an
        observation of its epoch arrives, that is once its policy serves: a reload
        that is built and then rejected (providers not ready) never changes what the
        serving policy's detection does."""
        self._next_epoch += 1
        epoch = self._next_epoch
        self._epochs[epoch] = (config, tuple(routes))
        while len(self._epochs) > MAX_EPOCHS:  # the oldest proposals: never served
            oldest = next(iter(self._epochs))
            if oldest == self._epoch:
                self._epochs[oldest] = self._epochs.pop(oldest)  # keep, move to the end
                oldest = next(iter(self._epochs))
            del self._epochs[oldest]
        if self.config is None:
            self._apply(epoch)
        return epoch

    def _apply(self, epoch: int) -> None:
        found = self._epochs.get(epoch)
        if found is None:
            return
        self._epoch = epoch
        self.configure(*found)

    def configure(self, config: DetectionConfig, routes: Iterable[NamedRoute] = ()) -> None:
        """Take a policy's thresholds and route templates. Tables survive a reload
        when their bounds do not change (a new bound resizes them)."""
        metrics = self.metrics
        tables = config.tables
        self.bound = config.queue
        self.interval = config.interval
        self._params = {
            r.name: pattern for r in routes if (pattern := param_pattern(r.path)) is not None
        }
        old = self.config
        if old is not None and old.tables == tables and same_shape(old, config):
            self.config = config
            self._rebind(config)
            return
        self.config = config
        self.store = FeatureStore(
            callers=tables.callers,
            routes=tables.routes,
            window=config.enumeration.window,
            alpha=config.alpha,
            metrics=metrics,
        )
        self.detectors = build_detectors(config, metrics)
        self._in_force.resize(tables.callers)
        self._rebind(config)

    def disable(self) -> None:
        """A policy without ``detection:`` was built: score nothing more (the task, if
        started, keeps running idle until the service closes it). If that policy is
        rejected, the next observation of the serving one applies its section again."""
        self._epoch = 0
        self.config = None
        self.store = None
        self.detectors = ()
        self.queue.clear()

    def _rebind(self, config: DetectionConfig) -> None:
        by_name = configs_by_name(config)
        self._by_name = by_name
        for detector in self.detectors:
            setattr(detector, "config", by_name[detector.name])  # noqa: B010 (a property in the protocol)

    # -- the request path and the feed: O(1), never blocks ------------------------

    def offer(self, item: Observation | ResponseObservation) -> None:
        queue = self.queue
        if len(queue) >= self.bound:
            self.dropped.inc()
        else:
            queue.append(item)

    def on_observation(self, observation: Observation) -> None:
        self.offer(observation)

    def on_response(self, observation: ResponseObservation) -> None:
        self.offer(observation)

    # -- lifecycle ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="authz.detect")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.drain()  # what was queued before the stop is still scored

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            while self.queue:
                self.drain(SLICE)
                await asyncio.sleep(0)

    # -- scoring (background) -----------------------------------------------------

    def drain(self, limit: int | None = None) -> int:
        """Score up to ``limit`` queued items (all when None); how many were scored."""
        queue = self.queue
        popleft = queue.popleft
        score = self._score
        done = 0
        while queue and (limit is None or done < limit):
            item = popleft()
            done += 1
            try:
                if type(item) is tuple:  # from the detect stage
                    epoch: int = item[4]  # type: ignore[assignment]
                    if epoch != self._epoch:  # its policy serves now: its section
                        self._apply(epoch)
                    if self.store is not None:
                        score(scored_observation(item, self._params))  # type: ignore[arg-type]
                elif isinstance(item, ResponseObservation):
                    self._response(item)
                else:
                    self._observation(item)  # type: ignore[arg-type]
            except Exception:
                self._errors.inc()
                log.exception("scoring failed")
        return done

    def _observation(self, obs: Observation) -> None:
        store = self.store
        if store is None:
            return
        route = obs.route
        if route:
            if not obs.object_ids:
                pattern = self._params.get(route)
                if pattern is not None:
                    m = pattern.match(obs.path)
                    if m is not None:  # (tuple.__new__: a fifth of _replace's cost)
                        obs = _new(Observation, (*obs[:10], m.groups(), *obs[11:]))
        elif not obs.shape:
            obs = obs._replace(shape=path_shape(obs.path) if obs.path else "")
        self._score(obs)

    def _score(self, obs: Observation) -> None:
        """Score an observation whose object ids and shape are filled in."""
        store = self.store
        assert store is not None
        self._seen_request()
        route = obs.route
        now = obs.time
        if self._first is None:
            self._first = now
        early = None
        if self._feed and obs.decision_id:  # only once the access-log feed is live
            self._joins.put(obs.decision_id, obs)
            early = self._early.pop(obs.decision_id) if len(self._early) else None
        subject = obs.subject
        key = f"{obs.identity_kind}:{subject}" if subject else f"addr:{obs.client_address}"
        route_key = route or f"?{obs.shape}"
        store.route(route_key, now).add(now, key)
        store.observe(obs, key)
        store.current = (obs, key, route_key)  # the detectors need not work them out again
        for detector in self.detectors:
            found = detector.observe(obs, store)
            if found:
                self._act(found, obs)
        if early is not None:
            self._response(early, again=True)

    def _response(self, response: ResponseObservation, again: bool = False) -> None:
        store = self.store
        if store is None:
            return
        if not again:
            self._seen_response()
        self._feed = True
        if response.decision_id:
            obs = self._joins.peek(response.decision_id)
            if obs is None:
                if len(self._early) >= EARLY:  # the oldest waiting never found its own
                    self._unjoined.inc()
                self._early.put(response.decision_id, response)
                return
        else:  # a public route the check never saw: a request of its own
            obs = feed_observation(response, self._client_of(response))
            self._observation(obs)
            if not obs.route:
                obs = obs._replace(shape=path_shape(obs.path) if obs.path else "")
        for detector in self.detectors:
            found = detector.respond(obs, response, store)
            if found:
                self._act(found, obs)

    def _client_of(self, response: ResponseObservation) -> str:
        """The client of a request only the feed saw, read as the check reads it."""
        config = self.config
        hops = config.trusted_hops if config is not None else 0
        if not hops or not response.forwarded_for:
            return response.client_address
        return client_address(response.client_address, response.forwarded_for, hops)

    def _evidence(self, finding: Finding, obs: Observation) -> dict[str, float | str]:
        """What the detector saw, and the caller's current window beside it."""
        evidence = dict(finding.evidence)
        store = self.store
        caller = store.callers.peek(identity_key(obs)) if store is not None else None
        if caller is not None:
            evidence.update(caller.evidence())
        return evidence

    def _act(self, findings: list[Finding], obs: Observation) -> None:
        config = self.config
        assert config is not None
        now = obs.time
        first = self._first if self._first is not None else now
        warm = now - first >= config.warmup
        for finding in findings:
            self._findings.labels(finding.detector).inc()  # off the request path
            if not warm and not finding.during_warmup:
                self._suppressed.labels("warmup").inc()
                continue
            detector = self._by_name[finding.detector]
            key = f"{finding.target_kind}:{finding.target}"
            rank = _RANK.get(detector.response, 0)
            until = self._in_force.peek(key)
            if until is not None and until[0] > now and until[1] >= rank:
                self._suppressed.labels("in_force").inc()  # as strong an action is in force
                continue
            ttl = detector.ttl
            self._in_force.put(key, (now + max(ttl, MIN_IN_FORCE), rank))
            monitor = config.mode_of(detector) == "monitor"
            response = detector.response  # type: ignore[assignment]
            action = Action(
                time=now,
                detector=finding.detector,
                response=response,  # type: ignore[arg-type]
                target_kind=finding.target_kind,
                target=finding.target,
                ttl=ttl,
                reason=REASON_OF[response],  # type: ignore[index]
                evidence=self._evidence(finding, obs),
                monitor=monitor,
            )
            self._emit(action)

    def _emit(self, action: Action) -> None:
        """Count, log and apply one action (the process scorer's child sends it to the
        serving process instead, which then emits it there)."""
        mode = "monitor" if action.monitor else "enforce"
        self._actions.labels(action.detector, action.response, mode).inc()
        log.warning(
            "action %s %s %s=%s ttl=%gs (%s) evidence=%s",
            action.detector,
            action.response,
            action.target_kind,
            action.target,
            action.ttl,
            mode,
            action.evidence,
        )
        try:
            self._sink().apply(action)
        except Exception:
            self._errors.inc()
            log.exception("action sink failed")


#: how strong a response is: a stronger one passes an action in force on its target
_RANK: dict[str, int] = {r: i for i, r in enumerate(RESPONSES)}
