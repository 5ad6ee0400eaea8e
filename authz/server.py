"""The running service: load the policy, serve, reload, drain.

- Health is NOT_SERVING until the policy is loaded and every provider is ready
  (JWKS fetched), SERVING after, NOT_SERVING again while draining. Once serving,
  a monitor re-checks readiness every second: a provider whose keys went stale
  (issuer unreachable past ``jwks_stale_ttl``) turns health NOT_SERVING until its
  keys are usable again; each transition is logged once.
- A changed policy file or OpenAPI document it names (polled) or SIGHUP reloads:
  a valid policy whose providers become ready swaps in atomically; an invalid one is logged with
  every problem and the old one keeps serving. Changes are detected by content (a hash of
  every file, read at each poll), and a new version is loaded only once two reads
  ``reload_settle`` seconds apart agree, from exactly the bytes that were hashed; what the
  new version opens up (:mod:`authz.policy.diff`) is logged, one line per finding.
- SIGTERM/SIGINT drain: NOT_SERVING, in-flight calls finish (up to the drain
  timeout), then exit.
- ``--workers N`` runs N processes on one port with SO_REUSEPORT; the parent
  forwards signals and restarts a worker that dies.
- Transports: gRPC (``--grpc``), HTTP (``--http``), or both, sharing one engine.
  The HTTP transport's health is ``GET /healthz`` (200 only when ready).
- Lifecycle (:mod:`authz.runtime`): state that outlives a policy (the decision log,
  rate-limit stores, the inventory) is registered in ``Shared.runtimes`` while a policy
  is built and started only once that policy is accepted (at start-up, or just before
  a reload swaps it in); a build that fails or a policy that is refused leaves nothing
  running. ``stop`` closes the serving policy's providers, then every started runtime
  in reverse order of start (the decision log last).
- The decision log's health is the gRPC health service ``authz.decision_log``:
  NOT_SERVING while it drops records or cannot write. With the policy's
  ``decision_log.on_failure: deny`` the overall health (and ``/healthz``) is
  NOT_SERVING too, since this replica then denies what it cannot record; with
  ``drop`` it stays SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz.audit.sink import DecisionSink, JsonLinesSink, NullSink
from authz.control.options import CONTROL_OFF, ControlOptions
from authz.engine import CompiledPolicy, PolicyEngine
from authz.errors import PolicyError
from authz.policy.config import PolicyConfig
from authz.policy.diff import widenings
from authz.policy.loader import load_policy
from authz.policy.snapshot import Snapshot, load_snapshot, read_snapshot
from authz.stages import Shared
from authz.telemetry.metrics import Metrics
from authz.transport.envoy_http import read_secret_file
from authz.transport.grpc_server import GrpcTransport
from authz.transport.http_server import HttpLimits, HttpTransport, TransportConfigError
from authz.units import parse_host_port

log = logging.getLogger("authz.server")
_MAX_INFO_FINDINGS = 20  # widening info lines logged per reload (warnings: all)

#: The gRPC health service name that reports the decision log.
DECISION_LOG_HEALTH = "authz.decision_log"
#: A drain stops taking calls once none has arrived for this long (see _quiesce).
DRAIN_QUIET = 0.1
#: Seconds between health checks (key staleness, the decision log); each is O(1).
HEALTH_INTERVAL = 0.25


@dataclass(frozen=True, slots=True)
class ServeOptions:
    policy: str
    grpc: str | None = "0.0.0.0:9191"  # None: no gRPC transport
    http: str | None = None  # HOST:PORT of the HTTP ext_authz transport
    # the HTTP transport's bounds, timeouts and connection cap
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    http_secret_file: str | None = None  # checks must carry this file's secret
    http_trust_network: bool = False  # no secret, yet bind beyond loopback
    workers: int = 1
    decision_log: str = "-"  # "-" stdout, "off", or a file path
    reload_interval: float = 1.0  # seconds between policy file checks; 0 disables
    #: A changed policy is loaded once two reads this many seconds apart agree.
    reload_settle: float = 0.5
    ready_timeout: float = 10.0  # how long a reload waits for its providers
    drain_timeout: float = 10.0
    #: After SIGTERM, keep answering (health NOT_SERVING) until no call has arrived for
    #: DRAIN_QUIET seconds or this long has passed; within drain_timeout.
    drain_delay: float = 1.0
    reuse_port: bool = False
    #: the control plane (authz.control); off unless given (the CLI's default is on)
    control: ControlOptions = CONTROL_OFF


def make_sink(spec: str, metrics: Metrics | None = None) -> DecisionSink:
    """The decision log ``spec`` names (built, not started: a runtime)."""
    if spec == "off":
        return NullSink()
    if spec == "-":
        return JsonLinesSink(sys.stdout, metrics=metrics)
    return JsonLinesSink(path=spec, metrics=metrics)


class Service:
    def __init__(self, options: ServeOptions, *, sink: DecisionSink | None = None) -> None:
        self.options = options
        self.shared = Shared()  # state that outlives a policy (stores, inventories)
        self.sink = sink or make_sink(options.decision_log, self.shared.metrics)
        self.shared.runtimes.add(self.sink)  # first: started first, closed last
        self.engine: PolicyEngine | None = None
        self.transport: GrpcTransport | None = None
        self.http: HttpTransport | None = None
        self.control: Any = None  # authz.control.server.ControlPlane when enabled
        self._stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._documents: tuple[str, ...] = ()  # files the policy names (OpenAPI)
        self._active_digest = ""  # content hash of the files of the policy in use
        self._rejected_digest = ""  # ... of the last content refused (not reparsed)
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

    async def _compile(self, settle: float) -> tuple[str, CompiledPolicy | None] | None:
        """The settled content's digest and its compiled policy, None for the policy when
        the content is the active one (nothing reparsed); None if stopping.

        Raises PolicyError for invalid content (remembered: the poller does not reparse it).
        """
        while True:
            snap = await self._settled(settle)
            if snap is None:
                return None
            if snap.digest == self._active_digest:
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

    async def _wait_ready(self, policy: CompiledPolicy, timeout: float) -> bool:
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

    async def reload(self) -> bool:
        """Load the policy file again once it has settled; swap it in if valid and ready."""
        async with self._reload_lock:
            assert self.engine is not None
            try:
                compiled = await self._compile(self.options.reload_settle)
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
                self._active_digest = digest
                self.shared.runtimes.abandon()
                await policy.close()
                return True
            ready = await self._wait_ready(policy, self.options.ready_timeout)
            if ready:
                try:  # what the new policy registered (a new store): before it serves
                    await self.shared.runtimes.start()
                except Exception:
                    log.exception(
                        "policy reload rejected: %s: a runtime failed to start", policy.version
                    )
                    ready = False
            if not ready:
                self.shared.runtimes.abandon()
                self._rejected_digest = digest  # retried when the files change again
                self._rejected.inc()
                log.error(
                    "policy reload rejected: %s: providers not ready within %.0fs; keeping %s",
                    policy.version,
                    self.options.ready_timeout,
                    self.engine.policy.version,
                )
                await policy.close()
                return False
            old = self.engine.swap(policy)
            self._active_digest = digest
            self._reloaded.inc()
            log.info("policy %s active (was %s)", policy.version, old.version)
            self._log_widenings(old.config, policy.config)
            # Calls that started on the old policy may still be using its providers.
            await asyncio.sleep(1.0)
            await old.close()
            return True

    @staticmethod
    def _log_widenings(old: PolicyConfig, new: PolicyConfig) -> None:
        """One line per finding: every warning; info lines up to a bound (a policy that
        adds a thousand routes should not write a thousand lines)."""
        findings = widenings(old, new)
        infos = [f for f in findings if f.level == "info"]
        for f in findings:
            if f.level == "warning":
                log.warning("policy %s widens access: %s", new.version, f.message)
        for f in infos[:_MAX_INFO_FINDINGS]:
            log.info("policy %s widens access: %s", new.version, f.message)
        if len(infos) > _MAX_INFO_FINDINGS:
            log.info(
                "policy %s widens access: %d more grants not listed",
                new.version,
                len(infos) - _MAX_INFO_FINDINGS,
            )

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
                await self.reload()
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
        # The decision log and what the policy registered (stores, inventory): running
        # before the first request. The policy's providers start in _become_ready.
        await self.shared.runtimes.start()
        self.engine = PolicyEngine(policy, sink=self.sink)
        engine = self.engine
        ports = []
        if self.options.grpc is not None:
            self.transport = GrpcTransport(
                engine, self.options.grpc, reuse_port=self.options.reuse_port
            )
            await self.transport.start()
            ports.append(f"gRPC port {self.transport.port}")
        if self.options.http is not None:
            secret = None
            if self.options.http_secret_file is not None:
                try:
                    secret = read_secret_file(self.options.http_secret_file)
                except ValueError as exc:
                    raise TransportConfigError(f"--http-secret-file {exc}") from None
                if os.stat(self.options.http_secret_file).st_mode & 0o077:
                    log.warning(
                        "--http-secret-file %s can be read by other users; chmod 600 it",
                        self.options.http_secret_file,
                    )
            self.http = HttpTransport(
                engine,
                self.options.http,
                reuse_port=self.options.reuse_port,
                limits=self.options.http_limits,
                secret=secret,
                trust_network=self.options.http_trust_network,
            )
            await self.http.start()
            ports.append(f"HTTP port {self.http.port}")
        if self.options.control.enabled:
            from authz.control.server import ControlPlane

            self.control = ControlPlane(self.options.control, engine)
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

    async def _become_ready(self, policy: CompiledPolicy) -> None:
        while not self._stopping.is_set():
            if await self._wait_ready(policy, self.options.ready_timeout):
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
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
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
        return _supervise(options)
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


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _http_argv(options: ServeOptions) -> list[str]:
    """The ``--http-*`` flags that give a worker the same HTTP transport."""
    limits = options.http_limits
    argv = [
        "--http-max-target-bytes", str(limits.max_target),
        "--http-max-head-bytes", str(limits.max_head),
        "--http-header-timeout", repr(limits.header_timeout),
        "--http-body-timeout", repr(limits.body_timeout),
        "--http-idle-timeout", repr(limits.idle_timeout),
        "--http-max-connections", str(limits.max_connections),
    ]  # fmt: skip
    if options.http_secret_file is not None:
        argv += ["--http-secret-file", options.http_secret_file]
    if options.http_trust_network:
        argv.append("--http-insecure-trust-network")
    return argv


def _supervise(options: ServeOptions) -> int:
    """Run N worker processes on one port (SO_REUSEPORT) and keep them running."""
    try:
        load_policy(options.policy)  # fail fast, once, with the located errors
    except PolicyError as exc:
        for location, message in exc.problems:
            print(f"{location}: {message}", file=sys.stderr)
        print("refusing to serve an invalid policy", file=sys.stderr)
        return 1
    addresses = [a for a in (options.grpc, options.http) if a is not None]
    if any(parse_host_port(a, port_zero=True).port == 0 for a in addresses):
        print("authz: --workers needs a fixed port", file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "authz", "serve", str(Path(options.policy))]
    if options.grpc is not None:
        argv += ["--grpc", options.grpc]
    if options.http is not None:
        argv += ["--http", options.http, *_http_argv(options)]
    argv += [
        "--workers",
        "1",
        "--reuse-port",
        "--decision-log",
        options.decision_log,
        "--reload-interval",
        str(options.reload_interval),
        "--reload-settle",
        str(options.reload_settle),
        "--drain-timeout",
        str(options.drain_timeout),
        "--drain-delay",
        str(options.drain_delay),
    ]
    from authz.control.workers import SupervisorControl

    control = SupervisorControl(options.control, options.workers)  # merges the workers'
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn(index: int) -> None:
        # The worker starts with SIGHUP ignored (inherited across exec): a reload
        # forwarded while it is still importing must not kill it.
        worker = [*argv, *control.worker_argv(index)]
        children[index] = subprocess.Popen(worker, preexec_fn=_ignore_sighup)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for child in children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for i in range(options.workers):
        spawn(i)
    try:
        control.start()
    except (OSError, TransportConfigError) as exc:
        print(f"authz serve: error: {exc}", file=sys.stderr)
        forward(signal.SIGTERM, None)
        for child in children.values():
            child.wait()
        return 2
    while True:
        time.sleep(0.2)
        for i, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            if stopping:
                children.pop(i)
            else:
                log.error("worker %d exited with %s; restarting", child.pid, code)
                time.sleep(0.5)
                spawn(i)
        if stopping and not children:
            control.close()
            return 0
