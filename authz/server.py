"""The running service: load the policy, serve, reload, drain.

- Health is NOT_SERVING until the policy is loaded and every provider is ready
  (JWKS fetched), SERVING after, NOT_SERVING again while draining.
- A changed policy file or OpenAPI document it names (polled) or SIGHUP reloads:
  a valid policy whose providers become ready swaps in atomically; an invalid one is logged with
  every problem and the old one keeps serving.
- SIGTERM/SIGINT drain: NOT_SERVING, in-flight calls finish (up to the drain
  timeout), then exit.
- ``--workers N`` runs N processes on one port with SO_REUSEPORT; the parent
  forwards signals and restarts a worker that dies.
- Transports: gRPC (``--grpc``), HTTP (``--http``), or both, sharing one engine.
  The HTTP transport's health is ``GET /healthz`` (200 only when ready).
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
from authz.engine import CompiledPolicy, PolicyEngine
from authz.errors import PolicyError
from authz.policy.loader import load_policy
from authz.stages import Shared
from authz.transport.envoy_http import read_secret_file
from authz.transport.grpc_server import GrpcTransport
from authz.transport.http_server import HttpLimits, HttpTransport, TransportConfigError

log = logging.getLogger("authz.server")


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
    ready_timeout: float = 10.0  # how long a reload waits for its providers
    drain_timeout: float = 10.0
    reuse_port: bool = False


def make_sink(spec: str) -> DecisionSink:
    if spec == "off":
        return NullSink()
    if spec == "-":
        return JsonLinesSink(sys.stdout)
    return JsonLinesSink(path=spec)


class Service:
    def __init__(self, options: ServeOptions, *, sink: DecisionSink | None = None) -> None:
        self.options = options
        self.sink = sink or make_sink(options.decision_log)
        self.engine: PolicyEngine | None = None
        self.shared = Shared()  # state that outlives a policy (stores, inventories)
        self.transport: GrpcTransport | None = None
        self.http: HttpTransport | None = None
        self._stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._file_stamp: tuple[tuple[float, int] | None, ...] | None = None
        self._documents: tuple[str, ...] = ()  # files the policy names (OpenAPI)
        self._tasks: list[asyncio.Task[None]] = []
        self.reloads = 0
        self.rejected_reloads = 0

    # -- policy ------------------------------------------------------------------

    def _stamp(self) -> tuple[tuple[float, int] | None, ...] | None:
        """Modification stamps of the policy file and the documents it names."""
        stamps: list[tuple[float, int] | None] = []
        for path in (self.options.policy, *self._documents):
            try:
                st = os.stat(path)
            except OSError:
                if path == self.options.policy:
                    return None
                stamps.append(None)
                continue
            stamps.append((st.st_mtime, st.st_size))
        return tuple(stamps)

    async def _compile(self) -> CompiledPolicy:
        self._file_stamp = self._stamp()
        config = load_policy(self.options.policy)
        if config.documents != self._documents:
            self._documents = config.documents
            self._file_stamp = self._stamp()
        return CompiledPolicy(config, shared=self.shared)

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
        """Load the policy file again; swap it in if valid and ready."""
        async with self._reload_lock:
            assert self.engine is not None
            try:
                policy = await self._compile()
            except PolicyError as exc:
                self.rejected_reloads += 1
                for location, message in exc.problems:
                    log.error("policy reload rejected: %s: %s", location, message)
                log.error("keeping policy %s", self.engine.policy.version)
                return False
            if policy.version == self.engine.policy.version:
                return True
            if not await self._wait_ready(policy, self.options.ready_timeout):
                self.rejected_reloads += 1
                log.error(
                    "policy reload rejected: %s: providers not ready within %.0fs; keeping %s",
                    policy.version,
                    self.options.ready_timeout,
                    self.engine.policy.version,
                )
                await policy.close()
                return False
            old = self.engine.swap(policy)
            self.reloads += 1
            log.info("policy %s active (was %s)", policy.version, old.version)
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
            stamp = self._stamp()
            if stamp is not None and stamp != self._file_stamp:
                log.info("policy file changed; reloading")
                await self.reload()

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        policy = await self._compile()  # PolicyError propagates: refuse to serve
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

    async def _become_ready(self, policy: CompiledPolicy) -> None:
        while not self._stopping.is_set():
            if await self._wait_ready(policy, self.options.ready_timeout):
                if self.transport is not None:
                    await self.transport.set_serving(True)
                if self.http is not None:
                    await self.http.set_serving(True)
                log.info("ready: policy %s, all providers ready", policy.version)
                return
            log.warning("providers of policy %s not ready; retrying", policy.version)

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        log.info("draining (up to %.1fs)", self.options.drain_timeout)
        stops = [
            t.stop(self.options.drain_timeout) for t in (self.transport, self.http) if t is not None
        ]
        await asyncio.gather(*stops)
        if self.engine is not None:
            await self.engine.policy.close()
        for obj in self.shared.values():
            closer = getattr(obj, "aclose", None)
            if closer is not None:
                await closer()
        self.sink.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        await self.start()
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
    if any(a.rsplit(":", 1)[-1] == "0" for a in addresses):
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
        "--drain-timeout",
        str(options.drain_timeout),
    ]
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn(index: int) -> None:
        children[index] = subprocess.Popen(argv)

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
            return 0
