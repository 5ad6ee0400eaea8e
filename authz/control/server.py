"""The control-plane gRPC server: authentication, the call log, and the fan-out that
makes ``--workers N`` answer as one service.

Three shapes, one :class:`ControlServer`:

- one process (``--workers 1``): :class:`ControlPlane` serves this process's
  :class:`~authz.control.servicer.AdminServicer` on ``--control``;
- a worker of ``--workers N``: the same servicer on a unix socket in a 0700
  directory the supervisor made (no TLS, no token: the directory is the boundary;
  only the supervisor connects);
- the supervisor of ``--workers N``: :class:`authz.control.workers.SupervisorControl`
  serves a fan-out servicer that asks every worker's socket and merges.

Every call but gRPC health must authenticate (:mod:`authz.control.auth`); the
Health service stays open, so that an orchestrator can probe the port, and is
logged at DEBUG only. Every other call is logged on ``authz.control`` at INFO, one
line: method, caller, peer, outcome and duration.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authz.audit.entry import message_detail
from authz.control import auth
from authz.control.options import ControlOptions
from authz.control.servicer import ADMIN_SERVICE, AdminServicer, add_to_server
from authz.secret_mode import warn_if_others_can_read
from authz.transport.envoy_http import is_loopback
from authz.transport.http_wire import TransportConfigError
from authz.units import parse_host_port

if TYPE_CHECKING:
    from authz.engine import PolicyEngine
    from authz.lifecycle import PolicyLifecycle

log = logging.getLogger("authz.control")

#: (method, caller, peer, outcome, request detail): writes one audit record
AuditHook = Callable[[str, str, str, str, dict[str, Any]], None]

_HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"


class ControlConfigError(TransportConfigError):
    """The control plane cannot run as configured (``authz serve`` exits 2)."""


# --------------------------------------------------------------------------- the call gate


class _Gate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates and logs every call (health: open, DEBUG)."""

    def __init__(
        self, authenticator: auth.Authenticator | None, audit: AuditHook | None = None
    ) -> None:
        #: None: a worker's socket (the directory is the boundary)
        self._auth = authenticator
        #: every call (but health) is also an audit record, when the policy keeps one
        self._audit = audit

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

    def _done(
        self, method: str, who: str, context: Any, started: float, outcome: str, request: Any
    ) -> None:
        level = logging.DEBUG if who == "worker-socket" else logging.INFO
        log.log(
            level,
            "control call %s by %s from %s: %s (%.1f ms)",
            method, who, context.peer(), outcome, (time.perf_counter() - started) * 1000,
        )  # fmt: skip
        if self._audit is not None:
            if who == auth.WORKER_SOCKET:  # the supervisor says whom it authenticated
                forwarded = dict(context.invocation_metadata() or ()).get(auth.CALLER_METADATA)
                who = f"{forwarded} (via the supervisor)" if forwarded else who
            try:
                self._audit(method, who, context.peer(), outcome, message_detail(request))
            except Exception:  # auditing a call never breaks it
                log.exception("control call %s: cannot audit it", method)

    def _unary(self, method: str, behaviour: Any) -> Any:
        async def call(request: Any, context: Any) -> Any:
            who = await self._admit(method, context)
            auth.CALLER.set(who)  # for the servicer: changes are logged with their caller
            started = time.perf_counter()
            try:
                response = await behaviour(request, context)
            except BaseException:
                self._done(method, who, context, started, _code(context), request)
                raise
            self._done(method, who, context, started, "OK", request)
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
                self._done(method, who, context, started, _code(context), None)
                raise
            self._done(method, who, context, started, "OK", None)

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

    def __init__(
        self, options: ControlOptions, servicer: Any, *, audit: AuditHook | None = None
    ) -> None:
        self.options = options
        self._servicer = servicer
        self._audit = audit
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
            warn_if_others_can_read("--control-token-file", options.token_file)
        mtls = options.client_ca is not None
        worker = options.worker_socket is not None
        authenticator = None if worker else auth.Authenticator(token=token, mtls=mtls)
        gate = _Gate(authenticator, self._audit)
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
    """The control plane's TLS: the same reloading machinery as the transports
    (:mod:`authz.transport.tls`), so a renewed certificate applies to new connections."""
    from authz.transport.tls import CertificateReloader, TlsConfigError, TlsFiles

    assert options.tls_cert is not None and options.tls_key is not None
    try:
        reloader = CertificateReloader(
            TlsFiles(options.tls_cert, options.tls_key, options.client_ca)
        )
    except TlsConfigError as exc:
        raise ControlConfigError(f"control plane: {exc}") from None
    return reloader.grpc_credentials()


class ControlPlane:
    """The control plane of one ``authz serve`` process (``start``/``aclose``)."""

    def __init__(
        self, options: ControlOptions, engine: PolicyEngine, policies: PolicyLifecycle | None = None
    ) -> None:
        self._engine = engine
        self.server = ControlServer(options, AdminServicer(engine, policies), audit=self.audit)

    def audit(self, method: str, caller: str, peer: str, outcome: str, detail: Any) -> None:
        """One audit record for a control-plane call, in the serving policy's trail."""
        gate = self._engine.policy.audit
        if gate is not None:
            gate.writer.record_control(method, caller, peer, outcome, detail)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.server.start()

    async def aclose(self) -> None:
        await self.server.aclose()
