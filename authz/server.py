"""The running service: load the policy, serve, reload, drain.

- Health (:mod:`authz.health`) is NOT_SERVING until the policy is loaded and every
  provider is ready, SERVING after, NOT_SERVING again while draining.
- A changed policy file or OpenAPI document it names (polled) or SIGHUP reloads:
  a valid policy whose providers become ready swaps in atomically; an invalid one is logged with
  every problem and the old one keeps serving. Changes are detected by content (a hash of
  every file, read at each poll), and a new version is loaded only once two reads
  ``reload_settle`` seconds apart agree, from exactly the bytes that were hashed; what the
  new version opens up (:mod:`authz.policy.diff`) is logged, one line per finding.
- SIGTERM/SIGINT drain: NOT_SERVING, in-flight calls finish (up to the drain
  timeout), then exit.
- ``--workers N`` runs N processes on one port with SO_REUSEPORT
  (:mod:`authz.supervisor`); the parent forwards signals and restarts a worker that dies.
- Transports: gRPC (``--grpc``), HTTP (``--http``), or both, sharing one engine.
  The HTTP transport's health is ``GET /healthz`` (200 only when ready).
- Lifecycle (:mod:`authz.runtime`): state that outlives a policy (the decision log,
  rate-limit stores, the inventory) is registered in ``Shared.runtimes`` while a policy
  is built and started only once that policy is accepted (at start-up, or just before
  a reload swaps it in); a build that fails or a policy that is refused leaves nothing
  running. ``stop`` closes the serving policy's providers, then every started runtime
  in reverse order of start (the decision log last).
- The last ``--policy-history`` versions are kept, for rollbacks (:mod:`authz.lifecycle`).

Over 400 lines for now: load, reload (audited), rollback's swap-in and drain share
the reload lock and the active digest; the transports' start-up is the next to move out.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

from authz.audit.sink import DecisionSink, JsonLinesSink, NullSink
from authz.compiled import CompiledPolicy
from authz.engine import PolicyEngine
from authz.errors import PolicyError
from authz.health import DECISION_LOG_HEALTH, HealthReporting, wait_ready
from authz.policy.diff import log_widenings
from authz.policy.history import PolicyHistory
from authz.policy.snapshot import Snapshot, load_snapshot, read_snapshot
from authz.secret_mode import warn_if_others_can_read
from authz.serve_options import ServeOptions
from authz.stages import Shared
from authz.supervisor import supervise
from authz.telemetry.metrics import Metrics
from authz.telemetry.runtime import Telemetry
from authz.transport.envoy_http import read_secret_file
from authz.transport.grpc_server import GrpcTransport
from authz.transport.http_server import HttpTransport
from authz.transport.http_wire import TransportConfigError

log = logging.getLogger("authz.server")

#: A drain stops taking calls once none has arrived for this long (see _quiesce).
DRAIN_QUIET = 0.1


def make_sink(spec: str, metrics: Metrics | None = None) -> DecisionSink:
    """The decision log ``spec`` names (built, not started: a runtime)."""
    if spec == "off":
        return NullSink()
    if spec == "-":
        return JsonLinesSink(sys.stdout, metrics=metrics)
    return JsonLinesSink(path=spec, metrics=metrics)


class Service(HealthReporting):
    def __init__(self, options: ServeOptions, *, sink: DecisionSink | None = None) -> None:
        self.options = options
        self.shared = Shared()  # state that outlives a policy (stores, inventories)
        self.sink = sink or make_sink(options.decision_log, self.shared.metrics)
        self.shared.runtimes.add(self.sink)  # first: started first, closed last
        if options.access_log_grpc is not None:  # Envoy's access log -> the response hub
            from authz.transport.als_server import access_log_runtime

            access_log_runtime(self.shared, options)
        self.telemetry = Telemetry(options.telemetry, self.shared)  # --metrics, OTLP
        self.shared.runtimes.add(self.telemetry)
        self.engine: PolicyEngine | None = None
        self.transport: GrpcTransport | None = None
        self.http: HttpTransport | None = None
        self.control: Any = None  # authz.control.server.ControlPlane when enabled
        self._stopping = asyncio.Event()
        self.reload_lock = asyncio.Lock()  # held by a reload or a rollback
        self._documents: tuple[str, ...] = ()  # files the policy names (OpenAPI)
        self._active_digest = ""  # content hash of the files of the policy in use
        self._rejected_digest = ""  # ... of the last content refused (not reparsed)
        self.history = PolicyHistory(options.policy_history)
        self.disk_version = ""  # the version the file held when last loaded
        self._tasks: list[asyncio.Task[None]] = []
        self.serving = False  # what health reports (before draining)
        reloads = self.shared.metrics.counter(
            "authz_policy_reloads_total", "policy reloads by result", ("result",)
        )
        self._reloaded, self._rejected = reloads.labels("applied"), reloads.labels("rejected")
        self._ready = False  # policy loaded, providers ready
        self._log_healthy = True
        self._published_log_health: bool | None = None
        self._served_once = False  # transitions are logged only after the first SERVING

    @property
    def reloads(self) -> int:
        """Reloads that swapped a new policy in (from the metrics)."""
        return int(getattr(self._reloaded, "value", 0))

    @property
    def rejected_reloads(self) -> int:
        return int(getattr(self._rejected, "value", 0))

    # -- policy ------------------------------------------------------------------

    async def _snapshot(self) -> Snapshot:
        """The policy file and the documents it named, read and hashed now (in a thread:
        the event loop keeps answering while a large OpenAPI document is read)."""
        return await asyncio.to_thread(read_snapshot, self.options.policy, self._documents)

    async def _settled(self, settle: float) -> Snapshot | None:
        """A snapshot that two reads ``settle`` seconds apart agree on (None: stopping).

        A writer that is still writing changes the content between the reads; we wait
        until it stops, however long that takes, rather than load a file cut short.
        """
        snap = await self._snapshot()
        waited = False
        while settle > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), settle)
            if self._stopping.is_set():
                return None
            again = await self._snapshot()
            if again.digest == snap.digest:
                break
            if not waited:
                log.info("policy files still changing; waiting for them to settle")
                waited = True
            snap = again
        return snap

    async def _compile(
        self, settle: float, *, force: bool = False
    ) -> tuple[str, CompiledPolicy | None] | None:
        """The settled content's digest and its compiled policy, None for the policy when
        the content is the active one (nothing reparsed); None if stopping.

        Raises PolicyError for invalid content (remembered: the poller does not reparse it).
        """
        while True:
            snap = await self._settled(settle)
            if snap is None:
                return None
            if snap.digest == self._active_digest and not force:
                return snap.digest, None
            # Parsing takes a while (~0.2 s for the example policy): off the event loop.
            result = await asyncio.to_thread(load_snapshot, snap)
            if not result.covered or result.documents != snap.document_paths:
                # The policy names other documents now: hash and settle those too.
                self._documents = result.documents
                continue
            if result.error is not None:
                self._rejected_digest = snap.digest
                raise result.error
            assert result.config is not None
            try:
                policy = CompiledPolicy(result.config, shared=self.shared)
            except BaseException:
                self.shared.runtimes.abandon()  # registered by the failed build: never started
                raise
            return snap.digest, policy

    def _recent(self) -> bool:
        try:
            mtime = os.stat(self.options.policy).st_mtime
        except OSError:
            return False  # the loader reports it
        return time.time() - mtime < self.options.reload_settle

    async def reload(self, *, force: bool = False, by: str = "file") -> bool:
        """Load the policy file once settled (``force``: even if unchanged); swap it in if
        valid and ready. Audited (when the policy keeps an audit trail) with who or what
        asked (``by``) and the outcome."""
        assert self.engine is not None
        before = self.engine.policy.version
        applied = await self._reload(force=force, by=by)
        gate = self.engine.policy.audit
        if gate is not None:
            after = self.engine.policy.version
            gate.writer.record_control(
                "reload", by, "", "applied" if applied else "rejected",
                {"from_version": before, "to_version": after, "changed": after != before},
            )  # fmt: skip
        return applied

    async def _reload(self, *, force: bool, by: str) -> bool:
        async with self.reload_lock:
            assert self.engine is not None
            try:
                compiled = await self._compile(self.options.reload_settle, force=force)
            except PolicyError as exc:
                self._rejected.inc()
                for location, message in exc.problems:
                    log.error("policy reload rejected: %s: %s", location, message)
                log.error("keeping policy %s", self.engine.policy.version)
                return False
            if compiled is None:  # stopping
                return False
            digest, policy = compiled
            if policy is None:
                return True  # the content in use
            if policy.version == self.engine.policy.version:
                self._active_digest, self.disk_version = digest, policy.version
                self.shared.runtimes.abandon()
                await policy.close()
                return True
            if not await self.swap_in(policy, "reload", by, digest=digest):
                self._rejected_digest = digest  # retried when the files change again
                return False
            return True

    async def swap_in(
        self, policy: CompiledPolicy, origin: str, by: str, *, digest: str | None = None
    ) -> bool:
        """Make a built policy active once its providers are ready (the reload lock is
        held); ``origin`` (reload, rollback) and ``by`` go to the history and the log.
        ``digest``: the file's content just loaded, recorded as on disk in the same step
        as the swap, so no one sees the new policy serving beside the old file version."""
        assert self.engine is not None
        ready = await wait_ready(policy, self.options.ready_timeout)
        if ready:
            try:  # what the new policy registered (a new store): before it serves
                await self.shared.runtimes.start()
            except Exception:
                log.exception(
                    "policy %s rejected: %s: a runtime failed to start", origin, policy.version
                )
                ready = False
        if not ready:
            self.shared.runtimes.abandon()
            self._rejected.inc()
            log.error(
                "policy %s rejected: %s: providers not ready within %.0fs; keeping %s",
                origin,
                policy.version,
                self.options.ready_timeout,
                self.engine.policy.version,
            )
            await policy.close()
            return False
        old = self.engine.swap(policy)
        self.telemetry.policy_changed(self.engine)
        if digest is not None:
            self._active_digest, self.disk_version = digest, policy.version
        self._reloaded.inc()
        self.history.record(policy.config, origin, by)
        log.info("policy %s active (was %s; %s by %s)", policy.version, old.version, origin, by)
        log_widenings(old.config, policy.config, log)
        # Calls that started on the old policy may still be using its providers.
        await asyncio.sleep(1.0)
        await old.close()
        return True

    async def _watch_file(self) -> None:
        interval = self.options.reload_interval
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            if self._stopping.is_set():
                return
            # Hash at every poll, no (mtime, size) pre-check: an edit can keep both.
            snap = await self._snapshot()
            if not snap.readable:  # mid-replacement or removed: keep what we have
                continue
            if snap.digest in (self._active_digest, self._rejected_digest):
                continue
            log.info("policy file changed; reloading")
            try:
                await self.reload(by="policy file change")
            except Exception:  # a bug must not end reloads for the life of the process
                log.exception("policy reload failed; keeping the current policy")

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        # PolicyError propagates: refuse to serve. A file written moments ago may still
        # be being written: let it settle first (an old one loads at once).
        compiled = await self._compile(self.options.reload_settle if self._recent() else 0.0)
        if compiled is None:
            raise PolicyError([(self.options.policy, "stopped before the policy settled")])
        self._active_digest, policy = compiled
        assert policy is not None  # nothing was active
        self.history.record(policy.config, "start", "start")
        self.disk_version = policy.version
        # The decision log and what the policy registered (stores, inventory): running
        # before the first request. The policy's providers start in _become_ready.
        await self.shared.runtimes.start()
        self.engine = PolicyEngine(policy, sink=self.sink, listeners=self.telemetry.listeners)
        self.telemetry.attach(self.engine)
        engine = self.engine
        ports = []
        if self.options.grpc is not None:
            self.transport = GrpcTransport(
                engine, self.options.grpc, reuse_port=self.options.reuse_port,
                tls=self.options.tls,
            )  # fmt: skip
            await self.transport.start()
            ports.append(f"gRPC port {self.transport.port}")
        if self.options.http is not None:
            secret = None
            if self.options.http_secret_file is not None:
                try:
                    secret = read_secret_file(self.options.http_secret_file)
                except ValueError as exc:
                    raise TransportConfigError(f"--http-secret-file {exc}") from None
                warn_if_others_can_read("--http-secret-file", self.options.http_secret_file)
            self.http = HttpTransport(
                engine,
                self.options.http,
                reuse_port=self.options.reuse_port,
                limits=self.options.http_limits,
                secret=secret,
                trust_network=self.options.http_trust_network,
                tls=self.options.tls,
            )
            await self.http.start()
            ports.append(f"HTTP port {self.http.port}")
        if self.options.control.enabled:
            from authz.control.server import ControlPlane
            from authz.lifecycle import PolicyLifecycle

            self.control = ControlPlane(self.options.control, engine, PolicyLifecycle(self))
            await self.control.start()
        log.info(
            "authz serving policy %s on %s (pid %d)",
            policy.version,
            " and ".join(ports),
            os.getpid(),
        )
        # Everything loaded so far lives as long as the process: keep it out of the
        # cyclic collector's full passes (~7% less CPU per request under load).
        gc.collect()
        gc.freeze()
        self._tasks.append(asyncio.create_task(self._become_ready(policy)))
        if self.options.reload_interval > 0:
            self._tasks.append(asyncio.create_task(self._watch_file()))
        if self.transport is not None:
            await self.transport.set_health(DECISION_LOG_HEALTH, self.sink.healthy())
        self._tasks.append(asyncio.create_task(self._monitor_health()))

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        log.info("draining (up to %.1fs)", self.options.drain_timeout)
        started = time.monotonic()
        await self._quiesce()
        grace = max(0.0, self.options.drain_timeout - (time.monotonic() - started))
        stops = [t.stop(grace) for t in (self.transport, self.http) if t is not None]
        await asyncio.gather(*stops)
        if self.control is not None:
            await self.control.aclose()
        if self.engine is not None:
            await self.engine.policy.close()
        # every started runtime, in reverse order: stores, inventory, the decision log
        await self.shared.runtimes.aclose()

    async def _quiesce(self) -> None:
        """Report NOT_SERVING and keep answering while calls still arrive.

        Stopping the gRPC server cancels every call it has received but not yet handed
        to the servicer, so stopping the moment SIGTERM arrives fails calls that were
        sent before it. Callers (Envoy's health checks, a Kubernetes endpoint update)
        need a moment to move away; an idle service stops at once.
        """
        for transport in (self.transport, self.http):
            if transport is not None:
                await transport.set_serving(False)
        engine = self.engine
        limit = min(self.options.drain_delay, self.options.drain_timeout)
        if engine is None or limit <= 0:
            return
        deadline = time.monotonic() + limit
        seen = sum(engine.decisions.values())
        quiet_since = time.monotonic()
        while (now := time.monotonic()) < deadline:
            if now - quiet_since >= DRAIN_QUIET and engine.policy.shared.in_flight == 0:
                return
            await asyncio.sleep(0.02)
            total = sum(engine.decisions.values())
            if total != seen:
                seen, quiet_since = total, time.monotonic()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await self.start()
        # Only now: a SIGHUP during start-up (ignored since cmd_serve) has nothing to reload.
        reload = lambda: asyncio.ensure_future(self.reload(by="SIGHUP"))  # noqa: E731
        loop.add_signal_handler(signal.SIGHUP, reload)
        await stop.wait()
        await self.stop()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (AUTHZ_EVENT_LOOP=asyncio: the
    stdlib loop). uvloop roughly halves the HTTP transport's cost per request."""
    if os.environ.get("AUTHZ_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def run_service(options: ServeOptions) -> int:
    if options.workers > 1:
        return supervise(options)
    try:
        run_loop(Service(options).run())
    except PolicyError as exc:
        for location, message in exc.problems:
            print(f"{location}: {message}", file=sys.stderr)
        print("refusing to serve an invalid policy", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"authz: {exc}", file=sys.stderr)
        return 1
    except TransportConfigError as exc:
        print(f"authz serve: error: {exc}", file=sys.stderr)
        return 2
    return 0
