"""The enforcer: applies detectors' actions and operators' changes, and checks requests.

An :class:`Enforcer` is the process's :class:`~authz.detect.events.ActionSink`: the
stages of :mod:`authz.respond.stage` register it in ``Shared`` under
:data:`~authz.detect.events.ACTION_SINK` whenever a policy has a ``detection`` or an
``enforcement`` section, so a detector that acts (in the background) finds it there.
It is a runtime (:mod:`authz.runtime`): building it starts nothing; ``start`` begins
the expiry sweep and, with a Redis store, the subscription (:mod:`.redis_sync`).

What it holds is a bounded :class:`~authz.respond.table.Table`; what it does per
request is in :meth:`Enforcer.check_address` and :meth:`Enforcer.check_identity`:
one dict lookup per target kind the request has, and nothing at all (one attribute
read) while no entry could match (:attr:`Enforcer.request_active`,
:attr:`Enforcer.identity_active`).

- ``block``: 403 caller_blocked, on an address, its /24 or /64, or an identity;
- ``revoke``: 401 credential_revoked (a token, a subject, an API key);
- ``step_up``: 401 step_up_required with the RFC 9470 challenge, unless the token's
  ``acr`` is one of ``acr_values`` and its ``auth_time`` is within ``max_age``;
- ``throttle``: the caller gets ``enforcement.throttle`` (a GCRA bucket in the
  rate-limit stores: in process, or the Redis one when the store is Redis), 429
  caller_throttled with Retry-After once it is spent.

Monitor-mode actions are recorded and listed, never enforced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from authz.detect.events import Action
from authz.errors import (
    CallerBlocked,
    CredentialRevoked,
    EnforcementError,
    EnforcementUnavailable,
    StepUpRequired,
)
from authz.model import Identity
from authz.policy.enforcement_config import EnforcementConfig
from authz.ratelimit.memory import MemoryStore
from authz.ratelimit.redis_store import RedisStore
from authz.respond.records import ActionRecord, record_from_json, record_to_json
from authz.respond.redis_sync import RedisSync
from authz.respond.table import ENFORCED, REVOCABLE, Entry, Table, entry_key
from authz.respond.targets import TargetError, normalize
from authz.respond.throttle import Throttler
from authz.telemetry.metrics import MemoryMetrics, Metrics

log = logging.getLogger("authz.respond")

SWEEP_INTERVAL = 1.0
#: Series of the actions counter: detectors x responses x outcomes, bounded.
MAX_ACTION_SERIES = 512
#: An operator's note, at most (characters).
MAX_NOTE = 500
#: A hit: the entries in force on one target of the request.
Hit = tuple[Entry, ...]


class Enforcer:
    """Blocks, revocations, throttles and step-ups in force (see the module doc)."""

    name = "enforcement"

    def __init__(
        self,
        config: EnforcementConfig,
        *,
        metrics: Metrics | None = None,
        memory: MemoryStore | None = None,
        throttle_store: RedisStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics if metrics is not None else MemoryMetrics()
        self.config = config
        self.clock = clock
        self.request_active = False
        self.identity_active = False
        self.address_step_ups = False
        #: the shared store is down and the policy fails closed: refuse every request
        self.failing = False
        self.table = Table(
            config.max_entries, clock=clock, metrics=self.metrics, on_change=self._refresh
        )
        self.sync: RedisSync | None = None
        if config.store is not None:
            self.sync = RedisSync(
                config.store, self.table, metrics=self.metrics, on_state=self._store_state
            )
            self.sync.max_actions = config.actions
        self.throttler = Throttler(
            memory if memory is not None else MemoryStore(metrics=self.metrics), throttle_store
        )
        self.recent: deque[ActionRecord] = deque(maxlen=config.actions)
        self._sweeper: asyncio.Task[None] | None = None
        self._actions = self.metrics.counter(
            "authz_enforcement_actions_total",
            "detectors' actions by what became of them",
            ("detector", "response", "outcome"),
            max_series=MAX_ACTION_SERIES,
        )
        denied = self.metrics.counter(
            "authz_enforcement_denied_total", "requests refused by an enforcement", ("response",)
        )
        self._denied = {r: denied.labels(r) for r in (*ENFORCED, "unavailable")}
        self.throttler.denied = self._denied["throttle"]

    # -- configuration ------------------------------------------------------------------

    def configure(self, config: EnforcementConfig) -> None:
        """Apply a reloaded policy's section (the store itself is fixed at start)."""
        if config == self.config:
            return
        if config.store != self.config.store:
            log.warning(
                "enforcement: the store changed (%s -> %s); it takes effect at restart",
                self.config.store_name,
                config.store_name,
            )
            config = _with_store(config, self.config)
        self.config = config
        self.table.max_entries = config.max_entries
        if self.sync is not None:
            self.sync.max_actions = config.actions
        if self.recent.maxlen != config.actions:
            self.recent = deque(self.recent, maxlen=config.actions)

    # -- what detectors and operators do ------------------------------------------------

    def apply(self, action: Action) -> None:
        """An action of a detector (:class:`~authz.detect.events.ActionSink`); any thread."""
        detector = action.detector or "unknown"
        if action.response == "log":
            self._record(action, "logged")
            log.info(
                "action by %s: log %s %s %s",
                detector,
                action.target_kind,
                action.target,
                _evidence_text(action.evidence),
            )
            return
        try:
            entry = self._entry(
                action.response,
                action.target_kind,
                action.target,
                action.ttl,
                source="detector",
                by=detector,
                evidence=tuple((str(k), str(v)) for k, v in action.evidence.items()),
                monitor=action.monitor,
            )
        except TargetError as exc:
            self._record(action, "rejected", str(exc))
            log.warning("action by %s rejected: %s", detector, exc)
            return
        existing = self.table.get(entry.key)
        if existing is not None and (
            (entry.monitor and not existing.monitor)
            or (existing.monitor == entry.monitor and existing.expires >= entry.expires)
        ):
            self._record(action, "kept", existing.describe(self.clock()))
            return
        self._put(entry)
        outcome = "monitor" if entry.monitor else "enforced"
        self._record(action, outcome)
        log.log(
            logging.INFO if entry.monitor else logging.WARNING,
            "action%s: %s %s",
            " (monitor: not enforced)" if entry.monitor else "",
            entry.describe(self.clock()),
            _evidence_text(action.evidence),
        )

    def add(
        self,
        response: str,
        target_kind: str,
        target: str,
        ttl: float = 0.0,
        *,
        by: str,
        note: str = "",
    ) -> Entry:
        """An operator's enforcement (raises TargetError for a bad one)."""
        entry = self._entry(response, target_kind, target, ttl, source="operator", by=by, note=note)
        self._put(entry)
        return entry

    def lift(self, response: str, target_kind: str, target: str) -> Entry | None:
        """Remove one enforcement (everywhere, with a shared store); returns what was
        lifted, None when nothing was in force (raises TargetError for a bad target)."""
        if response not in ENFORCED:
            raise TargetError(f"unknown response {response!r} (one of {', '.join(ENFORCED)})")
        target = normalize(target_kind, target)
        key = entry_key(response, target_kind, target)
        removed = self.table.remove(key)
        if self.sync is not None:
            now = self.clock()
            tombstone = removed or Entry(response, target_kind, target, now, now + 1, "", "")
            # a lift removes entries made before it, wherever they are
            self.sync.publish("lift", tombstone._replace(created=max(tombstone.created, now)))
        return removed

    def entries(self, responses: tuple[str, ...] = ()) -> list[Entry]:
        """The entries in the table (expired ones not yet swept left out)."""
        now = self.clock()
        return [
            e
            for e in self.table.values()
            if e.expires > now and (not responses or e.response in responses)
        ]

    def actions(self, limit: int = 100, detector: str = "") -> list[ActionRecord]:
        """The most recent actions, newest first."""
        out = []
        for record in reversed(self.recent):
            if detector and record.action.detector != detector:
                continue
            out.append(record)
            if len(out) >= limit:
                break
        return out

    def _entry(
        self,
        response: str,
        target_kind: str,
        target: str,
        ttl: float,
        *,
        source: str,
        by: str,
        evidence: tuple[tuple[str, str], ...] = (),
        monitor: bool = False,
        note: str = "",
    ) -> Entry:
        if response not in ENFORCED:
            raise TargetError(f"unknown response {response!r} (one of {', '.join(ENFORCED)})")
        if response == "revoke" and target_kind not in REVOCABLE:
            raise TargetError(
                f"a revocation names a credential or its holder ({', '.join(REVOCABLE)}), "
                f"not a {target_kind}"
            )
        target = normalize(target_kind, target)
        if not math.isfinite(ttl) or ttl < 0:
            raise TargetError(f"not a TTL: {ttl!r}")
        if len(note) > MAX_NOTE or not note.isprintable():
            raise TargetError(f"a note is at most {MAX_NOTE} printable characters")
        if ttl == 0:
            ttl = self.config.revoke_ttl if response == "revoke" else self.config.block_ttl
        now = self.clock()
        return Entry(
            response, target_kind, target, now, now + ttl, source, by, evidence, monitor, note
        )

    def _put(self, entry: Entry) -> None:
        self.table.put(entry)
        if self.sync is not None:
            self.sync.publish("add", entry)

    def _record(self, action: Action, outcome: str, detail: str = "") -> None:
        record = ActionRecord(action, outcome, detail)
        self.recent.append(record)
        self._actions.labels(action.detector or "unknown", action.response, outcome).inc()
        if self.sync is not None:
            self.sync.publish_action(record_to_json(record))

    async def shared_actions(self, limit: int = 100, detector: str = "") -> list[ActionRecord]:
        """The most recent actions of every replica (a Redis store), else this process's."""
        if self.sync is None:
            return self.actions(limit, detector)
        found = await self.sync.recent_actions(self.config.actions if detector else limit)
        if found is None:
            return self.actions(limit, detector)
        out = []
        for text in found:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = record_from_json(text)
                if not detector or record.action.detector == detector:
                    out.append(record)
        return out[:limit]

    # -- the request path ---------------------------------------------------------------

    def _refresh(self) -> None:
        index = self.table.index
        self.request_active = self.failing or bool(index["address"] or index["prefix"])
        enforced = self.table.enforced
        #: step-ups on addresses or prefixes (checked once the identity is known)
        self.address_step_ups = bool(
            enforced.get(("step_up", "address")) or enforced.get(("step_up", "prefix"))
        )
        self.identity_active = bool(
            index["subject"] or index["api_key"] or index["token"] or self.address_step_ups
        )

    def _store_state(self, up: bool) -> None:
        store = self.config.store
        self.failing = not up and store is not None and store.on_error == "deny"
        self._refresh()

    def unavailable(self) -> EnforcementUnavailable:
        self._denied["unavailable"].inc()
        exc = EnforcementUnavailable("the shared enforcement store is unreachable")
        exc.element = "enforcement.store: redis unreachable (on_error: deny)"
        return exc

    def enforce(
        self,
        hits: tuple[Hit, ...],
        identity: Identity,
        *,
        responses: tuple[str, ...] = ENFORCED,
        explain: bool = False,
    ) -> Awaitable[None] | None:
        """Apply the entries of ``hits`` (one per matched target): the first of
        ``responses`` (in that order) that holds raises; a throttle returns an
        awaitable only when its bucket is shared (Redis)."""
        now = self.clock()
        throttle: Entry | None = None
        for response in responses:
            for hit in hits:
                for entry in hit:
                    if entry.response == response and entry.expires > now:
                        break
                else:
                    continue
                if response == "throttle":
                    throttle = throttle or entry
                    continue
                if response == "step_up" and self.stepped_up(identity, now):
                    continue
                raise self._error(entry, now, count=not explain)
        if throttle is not None:
            return self.throttler.charge(throttle, self.config.throttle, now, explain)
        return None

    def stepped_up(self, identity: Identity, now: float) -> bool:
        """Whether ``identity`` satisfies the policy's step-up (RFC 9470)."""
        claims = identity.claims
        step_up = self.config.step_up
        if step_up.acr_values and claims.get("acr") not in step_up.acr_values:
            return False
        auth_time = claims.get("auth_time")
        if isinstance(auth_time, bool) or not isinstance(auth_time, int | float):
            return False
        return now - auth_time <= step_up.max_age

    def _error(self, entry: Entry, now: float, *, count: bool = True) -> EnforcementError:
        if count:  # explain counts nothing
            self._denied[entry.response].inc()
        exc: EnforcementError
        if entry.response == "revoke":
            exc = CredentialRevoked(f"revoked: {entry.target_kind}")
        elif entry.response == "step_up":
            step_up = self.config.step_up
            exc = StepUpRequired(step_up.acr_values, math.ceil(step_up.max_age))
        else:
            exc = CallerBlocked(f"blocked: {entry.target_kind}")
        exc.element = entry.describe(now)
        return exc

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep(), name="enforcement-sweep"
            )
        if self.sync is not None:
            await self.sync.start()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self.table.sweep()
            except Exception:  # a bug must not end the sweep
                log.exception("enforcement: sweep failed")

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.sync is not None:
            await self.sync.aclose()

    def stats(self) -> dict[str, Any]:
        return {
            "entries": self.table.counts(),
            "max_entries": self.table.max_entries,
            "evicted": self.table.evictions,
            "store": self.config.store_name,
            "failing": self.failing,
            **({"redis": self.sync.stats()} if self.sync is not None else {}),
        }


def _with_store(config: EnforcementConfig, running: EnforcementConfig) -> EnforcementConfig:
    import dataclasses

    return dataclasses.replace(config, store=running.store)


def _evidence_text(evidence: Mapping[str, Any]) -> str:
    if not evidence:
        return ""
    return "(" + ", ".join(f"{k}={v}" for k, v in evidence.items()) + ")"
