"""The service's health: what it reports, and the monitor that keeps it true.

- Health is NOT_SERVING until the policy is loaded and every provider is ready
  (JWKS fetched), SERVING after, NOT_SERVING again while draining. Once serving,
  a monitor re-checks readiness every :data:`HEALTH_INTERVAL` seconds: a provider
  whose keys went stale (issuer unreachable past ``jwks_stale_ttl``) turns health
  NOT_SERVING until its keys are usable again; each transition is logged once.
- The decision log's health is the gRPC health service ``authz.decision_log``:
  NOT_SERVING while it drops records or cannot write. With the policy's
  ``decision_log.on_failure: deny`` the overall health (and ``/healthz``) is
  NOT_SERVING too, since this replica then denies what it cannot record; with
  ``drop`` it stays SERVING.

:class:`HealthReporting` is the health half of :class:`authz.server.Service` (the
attributes below are the service's own; the service sets them up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from authz.audit.sink import DecisionSink
    from authz.compiled import CompiledPolicy
    from authz.engine import PolicyEngine
    from authz.serve_options import ServeOptions
    from authz.transport.grpc_server import GrpcTransport
    from authz.transport.http_server import HttpTransport

log = logging.getLogger("authz.server")

#: The gRPC health service name that reports the decision log.
DECISION_LOG_HEALTH = "authz.decision_log"
#: Seconds between health checks (key staleness, the decision log); each is O(1).
HEALTH_INTERVAL = 0.25


async def wait_ready(policy: CompiledPolicy, timeout: float) -> bool:
    """Start ``policy``'s providers and wait up to ``timeout`` for all to be ready."""
    try:
        await asyncio.wait_for(policy.start(), timeout)
    except Exception as exc:  # keys not fetched yet: keep polling ready()
        log.warning("policy %s: providers not ready yet: %s", policy.version, exc)
    deadline = time.monotonic() + timeout
    while not policy.ready():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


class HealthReporting:
    """Health state and its publication, mixed into the service."""

    options: ServeOptions
    sink: DecisionSink
    engine: PolicyEngine | None
    transport: GrpcTransport | None
    http: HttpTransport | None
    serving: bool  # what health reports (before draining)
    _stopping: asyncio.Event
    _ready: bool  # policy loaded, providers ready
    _log_healthy: bool
    _published_log_health: bool | None
    _served_once: bool  # transitions are logged only after the first SERVING

    async def _become_ready(self, policy: CompiledPolicy) -> None:
        while not self._stopping.is_set():
            if await wait_ready(policy, self.options.ready_timeout):
                self._ready = True
                log.info("ready: policy %s, all providers ready", policy.version)
                await self._publish_health()
                return
            log.warning("providers of policy %s not ready; retrying", policy.version)

    def unhealthy(self) -> str | None:
        """Why the service must not report SERVING now, or None when it may."""
        if self.engine is None or not self._ready:
            return "policy not ready yet"
        policy = self.engine.policy
        names = sorted(name for name, p in policy.providers.items() if not p.ready())
        if names:
            return f"providers not ready (no usable keys): {', '.join(names)}"
        if policy.log_fails_closed and not self._log_healthy:
            return "decision log cannot take records (decision_log.on_failure: deny)"
        return None

    async def _publish_health(self) -> None:
        """Overall health ("" and the Authorization service, HTTP /healthz) and the
        decision log's own health name; each change of either is logged once."""
        problem = None if not self._stopping.is_set() else "draining"
        problem = problem or self.unhealthy()
        serving = problem is None
        if serving != self.serving and self._served_once:
            if serving:
                assert self.engine is not None
                log.warning("health SERVING again: policy %s ready", self.engine.policy.version)
            else:
                log.error("health NOT_SERVING: %s", problem)
        if serving != self.serving or self._published_log_health != self._log_healthy:
            self.serving = serving
            self._served_once = self._served_once or serving
            self._published_log_health = self._log_healthy
            if self.transport is not None:
                await self.transport.set_serving(serving)
                await self.transport.set_health(DECISION_LOG_HEALTH, self._log_healthy)
            if self.http is not None:
                await self.http.set_serving(serving)

    async def _monitor_health(self) -> None:
        """Keep health true while running: keys go stale, the decision log fails."""
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEALTH_INTERVAL)
            if self._stopping.is_set() or self.engine is None:
                return
            log_healthy = self.sink.healthy()
            if log_healthy != self._log_healthy:
                if log_healthy:
                    log.warning("decision log healthy again")
                else:
                    log.error(
                        "decision log unhealthy (%s)",
                        "on_failure: deny: health NOT_SERVING; while it cannot take records, "
                        "allows become 503 decision_log_unavailable"
                        if self.engine.policy.log_fails_closed
                        else "on_failure: drop: records are being dropped or delayed",
                    )
                self._log_healthy = log_healthy
            await self._publish_health()
