"""``--workers N``: N ``authz serve`` processes on one port (SO_REUSEPORT).

The parent checks the policy once (located errors, exit 1), starts each worker with
the same flags plus ``--workers 1 --reuse-port``, forwards SIGTERM/SIGINT/SIGHUP to
them, and restarts a worker that dies (until it is stopping). When the policy scores
detection in a process, the parent also runs one scoring process for all workers
(:class:`SharedScorer`), so that detection sees the replica's traffic as one. The control plane's
fan-out over the workers is :mod:`authz.control.workers`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from authz.errors import PolicyError
from authz.policy.loader import load_policy
from authz.transport.http_wire import TransportConfigError
from authz.units import parse_host_port

if TYPE_CHECKING:
    from authz.serve_options import ServeOptions

log = logging.getLogger("authz.server")


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def http_argv(options: ServeOptions) -> list[str]:
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


def access_log_argv(options: ServeOptions) -> list[str]:
    """The ``--access-log-*`` flags that give a worker the same access-log port."""
    if options.access_log_grpc is None:
        return []
    argv = ["--access-log-grpc", options.access_log_grpc]
    if options.access_log_secret_file is not None:
        argv += ["--access-log-secret-file", options.access_log_secret_file]
    if options.access_log_trust_network:
        argv.append("--access-log-insecure-trust-network")
    return argv


def tls_argv(options: ServeOptions) -> list[str]:
    """The ``--tls-*`` flags that give a worker the same TLS listeners."""
    if options.tls is None:
        return []
    argv = ["--tls-cert", options.tls.cert, "--tls-key", options.tls.key]
    if options.tls.client_ca is not None:
        argv += ["--tls-client-ca", options.tls.client_ca]
    return argv


def supervise(options: ServeOptions) -> int:
    """Run N worker processes on one port (SO_REUSEPORT) and keep them running."""
    try:
        config = load_policy(options.policy)  # fail fast, once, with the located errors
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
        argv += ["--http", options.http, *http_argv(options)]
    argv += access_log_argv(options)  # each worker binds it too (SO_REUSEPORT)
    argv += tls_argv(options)  # each worker reloads the files itself
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
        "--policy-history",
        str(options.policy_history),
        "--drain-timeout",
        str(options.drain_timeout),
        "--drain-delay",
        str(options.drain_delay),
    ]
    from authz.control.workers import SupervisorControl

    argv += options.telemetry.worker_argv()  # each worker exports its own OTLP
    # merges the workers' answers (and metrics for --metrics)
    control = SupervisorControl(options.control, options.workers, options.telemetry)
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False
    detection = config.detection
    scorer = SharedScorer() if detection is not None and detection.scorer == "process" else None
    env = scorer.env() if scorer is not None else None

    def spawn(index: int) -> None:
        # The worker starts with SIGHUP ignored (inherited across exec): a reload
        # forwarded while it is still importing must not kill it.
        worker = [*argv, *control.worker_argv(index)]
        children[index] = subprocess.Popen(worker, preexec_fn=_ignore_sighup, env=env)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for child in children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    if scorer is not None:
        scorer.start()  # before the workers: they connect as they come up
    for i in range(options.workers):
        spawn(i)
    try:
        control.start()
    except (OSError, TransportConfigError) as exc:
        print(f"authz serve: error: {exc}", file=sys.stderr)
        forward(signal.SIGTERM, None)
        for child in children.values():
            child.wait()
        if scorer is not None:
            scorer.stop()
        return 2
    while True:
        time.sleep(0.2)
        if scorer is not None and not stopping:
            scorer.keep()
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
            if scorer is not None:
                scorer.stop()  # last: the workers sent it what they had queued
            return 0


class SharedScorer:
    """The replica's one scoring process for every worker (``python -m
    authz.detect.child --listen PATH``, see :mod:`authz.detect.child`): started before
    the workers, restarted when it dies, stopped after the last worker."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="authz-detect-")
        self.path = os.path.join(self.dir, "scorer.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self._next_start = 0.0
        self._delay = 1.0

    def env(self) -> dict[str, str]:
        from authz.detect.remote import SHARED_SOCKET

        return {**os.environ, SHARED_SOCKET: self.path}

    def start(self) -> None:
        command = [sys.executable, "-m", "authz.detect.child", "--listen", self.path]
        root = str(Path(__file__).resolve().parents[1])  # this package, not the cwd's
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
        self.process = subprocess.Popen(command, preexec_fn=_ignore_sighup, cwd=root, env=env)

    def keep(self) -> None:
        """Restart it if it died (1 s, doubling to 30 s, between attempts)."""
        process = self.process
        if process is None or process.poll() is None:
            return
        now = time.monotonic()
        if not self._next_start:
            log.error("the scoring process exited with %s; restarting", process.returncode)
            self._next_start = now + self._delay
            self._delay = min(30.0, self._delay * 2)
        if now >= self._next_start:
            self._next_start = 0.0
            self.start()

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
