"""The control-plane gRPC server: authentication, the call log, and the fan-out that
makes ``--workers N`` answer as one service.

Three shapes, one :class:`ControlServer`:

- one process (``--workers 1``): :class:`ControlPlane` serves this process's
  :class:`~authz.control.servicer.AdminServicer` on ``--control``;
- a worker of ``--workers N``: the same servicer on a unix socket in a 0700
  directory the supervisor made (no TLS, no token: the directory is the boundary;
  only the supervisor connects);
- the supervisor of ``--workers N``: :class:`SupervisorControl` runs, in a thread
  with its own event loop, a :class:`FanOutAdmin` on ``--control`` that asks every
  worker's socket and merges the answers (:mod:`authz.control.merge`). Explain is
  answered by one worker (any: they run the same policy).

Every call but gRPC health must authenticate (:mod:`authz.control.auth`); the
Health service stays open, so that an orchestrator can probe the port, and is
logged at DEBUG only. Every other call is logged on ``authz.control`` at INFO, one
line: method, caller, peer, outcome and duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authz.control import auth
from authz.control.merge import merge_counters, merge_inventories
from authz.control.options import ControlOptions
from authz.control.servicer import ADMIN_SERVICE, AdminServicer, add_to_server
from authz.transport.envoy_http import is_loopback
from authz.transport.http_server import TransportConfigError
from authz.units import parse_host_port
from authz.v1 import admin_pb2_grpc

if TYPE_CHECKING:
    from authz.engine import PolicyEngine

log = logging.getLogger("authz.control")

_HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"
#: How long the supervisor waits for one worker's answer.
WORKER_TIMEOUT = 5.0


class ControlConfigError(TransportConfigError):
    """The control plane cannot run as configured (``authz serve`` exits 2)."""


# --------------------------------------------------------------------------- the call gate


class _Gate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates and logs every call (health: open, DEBUG)."""

    def __init__(self, authenticator: auth.Authenticator | None) -> None:
        #: None: a worker's socket (the directory is the boundary)
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        details: Any,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if method.startswith(_HEALTH_PREFIX):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise RuntimeError(f"control plane: no gate for the shape of {method}")

    async def _admit(self, method: str, context: Any) -> str:
        if self._auth is None:
            return "worker-socket"
        caller = self._auth.authenticate(
            tuple(context.invocation_metadata() or ()), context.auth_context()
        )
        if not caller.identity:
            log.warning(
                "control call %s by - from %s: UNAUTHENTICATED (%s)",
                method, context.peer(), caller.problem,
            )  # fmt: skip
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, caller.problem)
        return caller.identity

    @staticmethod
    def _done(method: str, who: str, context: Any, started: float, outcome: str) -> None:
        level = logging.DEBUG if who == "worker-socket" else logging.INFO
        log.log(
            level,
            "control call %s by %s from %s: %s (%.1f ms)",
            method, who, context.peer(), outcome, (time.perf_counter() - started) * 1000,
        )  # fmt: skip

    def _unary(self, method: str, behaviour: Any) -> Any:
        async def call(request: Any, context: Any) -> Any:
            who = await self._admit(method, context)
            started = time.perf_counter()
            try:
                response = await behaviour(request, context)
            except BaseException:
                self._done(method, who, context, started, _code(context))
                raise
            self._done(method, who, context, started, "OK")
            return response

        return call

    def _stream(self, method: str, behaviour: Any) -> Any:
        async def call(requests: Any, context: Any) -> Any:
            who = await self._admit(method, context)
            started = time.perf_counter()
            try:
                async for response in behaviour(requests, context):
                    yield response
            except BaseException:
                self._done(method, who, context, started, _code(context))
                raise
            self._done(method, who, context, started, "OK")

        return call


def _code(context: Any) -> str:
    with contextlib.suppress(Exception):
        code = context.code()
        if code is not None:
            return str(getattr(code, "name", code))
    return "ERROR"


# --------------------------------------------------------------------------- the server


class ControlServer:
    """A grpc.aio server with Admin (``servicer``), Health and Reflection, gated."""

    def __init__(self, options: ControlOptions, servicer: Any) -> None:
        self.options = options
        self._servicer = servicer
        self.server: Any = None
        self.port = 0
        self.address = ""
        self.token_path: Path | None = None  # a token this server made (removed at close)
        self.health = health.aio.HealthServicer()

    async def start(self) -> None:
        options = self.options
        try:
            options.check()
        except ValueError as exc:
            raise ControlConfigError(str(exc)) from None
        token = None
        if options.token_file is not None:
            try:
                token = auth.TokenFile(options.token_file)
            except ValueError as exc:
                raise ControlConfigError(f"--control-token-file {exc}") from None
            if os.stat(options.token_file).st_mode & 0o077:
                log.warning(
                    "--control-token-file %s can be read by other users; chmod 600 it",
                    options.token_file,
                )
        mtls = options.client_ca is not None
        worker = options.worker_socket is not None
        authenticator = None if worker else auth.Authenticator(token=token, mtls=mtls)
        gate = _Gate(authenticator)
        server = grpc.aio.server(interceptors=(gate,))
        add_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        if worker:
            assert options.worker_socket is not None
            self.address = "unix:" + options.worker_socket
            self.port = server.add_insecure_port(self.address)
        else:
            assert options.address is not None
            self.address = options.address
            if options.tls_cert is not None:
                self.port = server.add_secure_port(options.address, _server_credentials(options))
            else:
                self.port = server.add_insecure_port(options.address)
        if self.port == 0:
            raise OSError(f"control plane: cannot listen on {self.address}")
        if authenticator is not None and not authenticator.configured:
            try:
                self.token_path = auth.ensure_local_token(self.port)
                token = auth.TokenFile(str(self.token_path))
            except (OSError, ValueError) as exc:
                raise ControlConfigError(f"control plane: cannot write its token: {exc}") from None
            gate._auth = auth.Authenticator(token=token, mtls=False)
        elif token is not None and options.tls_cert is None and not worker:
            host = parse_host_port(options.address or "", port_zero=True).host
            if not is_loopback(host):
                log.warning(
                    "--control %s: bearer tokens cross the network in clear text; add "
                    "--control-tls-cert/--control-tls-key",
                    options.address,
                )
        self.server = server
        await server.start()
        for name in ("", ADMIN_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if not worker:
            how = (
                "mTLS (client CA " + str(options.client_ca) + ")"
                if mtls
                else f"bearer token {options.token_file or self.token_path}"
            )
            host = self.address.rsplit(":", 1)[0]
            log.info("control plane on %s:%d (%s)", host, self.port, how)

    async def aclose(self, grace: float = 1.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        if self.token_path is not None:
            with contextlib.suppress(OSError):
                self.token_path.unlink()
            self.token_path = None


def _server_credentials(options: ControlOptions) -> Any:
    def read(path: str | None, flag: str) -> bytes:
        assert path is not None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ControlConfigError(f"{flag} {path}: {exc.strerror or exc}") from None

    key = read(options.tls_key, "--control-tls-key")
    cert = read(options.tls_cert, "--control-tls-cert")
    ca = read(options.client_ca, "--control-client-ca") if options.client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class ControlPlane:
    """The control plane of one ``authz serve`` process (``start``/``aclose``)."""

    def __init__(self, options: ControlOptions, engine: PolicyEngine) -> None:
        self.server = ControlServer(options, AdminServicer(engine))

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.server.start()

    async def aclose(self) -> None:
        await self.server.aclose()


# --------------------------------------------------------------------------- --workers N


class FanOutAdmin(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    """Answers for every worker: asks each one's socket and merges."""

    def __init__(self, sockets: Sequence[str], *, timeout: float = WORKER_TIMEOUT) -> None:
        self._sockets = tuple(sockets)
        self._timeout = timeout
        self._stubs: dict[str, Any] = {}

    def _stub(self, socket: str) -> Any:
        stub = self._stubs.get(socket)
        if stub is None:
            channel = grpc.aio.insecure_channel("unix:" + socket)
            stub = self._stubs[socket] = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
        return stub

    async def _all(self, name: str, request: Any, context: Any) -> list[Any]:
        calls = [
            getattr(self._stub(s), name)(request, timeout=self._timeout) for s in self._sockets
        ]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        good = [a for a in answers if not isinstance(a, BaseException)]
        for socket, answer in zip(self._sockets, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("control plane: worker %s did not answer %s: %s", socket, name, answer)
        if not good:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no worker answered")
        return good

    async def GetInventory(self, request: Any, context: Any) -> Any:
        return merge_inventories(await self._all("GetInventory", request, context))

    async def GetCounters(self, request: Any, context: Any) -> Any:
        return merge_counters(await self._all("GetCounters", request, context))

    async def Explain(self, request: Any, context: Any) -> Any:
        last: grpc.RpcError | None = None
        for socket in self._sockets:
            try:
                return await self._stub(socket).Explain(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    await context.abort(exc.code(), exc.details() or "")
                last = exc
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"no worker answered: {last}")


class SupervisorControl:
    """The control plane of ``--workers N``: one private socket per worker and the
    public server, run in a thread of the supervisor with an event loop of its own."""

    def __init__(self, options: ControlOptions, workers: int) -> None:
        self.options = options
        self._dir: str | None = None
        self.sockets: list[str] = []
        if options.address is not None:
            # 0700 (mkdtemp); in the temp dir, not the runtime dir: a unix socket's path
            # must stay under ~100 bytes
            self._dir = tempfile.mkdtemp(prefix="authz-workers-")
            self.sockets = [os.path.join(self._dir, f"worker-{i}.sock") for i in range(workers)]
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0

    def worker_argv(self, index: int) -> list[str]:
        """The ``authz serve`` flags of worker ``index``."""
        if not self.sockets:
            return ["--control", "off"]
        return ["--control-worker-socket", self.sockets[index]]

    def start(self) -> None:
        """Bind and serve (raises what the server raised: ControlConfigError, OSError)."""
        if not self.sockets:
            return
        started = threading.Event()

        async def serve() -> None:
            server = ControlServer(self.options, FanOutAdmin(self.sockets))
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            try:
                await server.start()
                self.port = server.port
            except BaseException as exc:
                self._error = exc
                started.set()
                return
            started.set()
            try:
                await self._stop.wait()
            finally:
                await server.aclose()

        self._thread = threading.Thread(
            target=lambda: asyncio.run(serve()), name="authz-control", daemon=True
        )
        self._thread.start()
        started.wait()
        if self._error is not None:
            self.close()
            raise self._error

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
