"""``--workers N``: one control plane for every worker.

Each worker serves its own :class:`~authz.control.servicer.AdminServicer` on a
unix socket in a 0700 directory made here (no credentials: the directory is the
boundary, and only the supervisor connects). The supervisor runs, in a thread with
an event loop of its own, a :class:`~authz.control.server.ControlServer` whose
servicer is a :class:`FanOutAdmin`: it asks every worker and merges the answers
(:mod:`authz.control.merge`); Explain is answered by one worker (they run the same
policy). A worker that does not answer is left out of the merge, with a warning;
``workers`` in the answer says how many answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import grpc

from authz.control import auth
from authz.control.enforcement import EnforcementFanOut
from authz.control.merge import merge_counters, merge_inventories
from authz.control.options import ControlOptions
from authz.control.policies import PolicyFanOut
from authz.control.server import ControlConfigError, ControlServer
from authz.telemetry.options import TELEMETRY_OFF, TelemetryOptions
from authz.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("authz.control")

#: How long the supervisor waits for one worker's answer.
WORKER_TIMEOUT = 5.0


class FanOutAdmin(EnforcementFanOut, PolicyFanOut, admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    """Answers for every worker: asks each one's socket and merges (blocks and
    revocations: EnforcementFanOut, a change goes to every worker; policy versions,
    rollbacks and reloads: PolicyFanOut, to every worker)."""

    def __init__(self, sockets: Sequence[str], *, timeout: float = WORKER_TIMEOUT) -> None:
        self._sockets = tuple(sockets)
        self._timeout = timeout
        self._stubs: dict[str, Any] = {}
        self._channels: list[Any] = []

    def _stub(self, socket: str) -> Any:
        stub = self._stubs.get(socket)
        if stub is None:
            channel = grpc.aio.insecure_channel("unix:" + socket)
            self._channels.append(channel)
            stub = self._stubs[socket] = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
        return stub

    async def aclose(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._stubs.clear()

    async def GetInventory(self, request: Any, context: Any) -> Any:
        return merge_inventories(await self._every("GetInventory", request, context))

    async def GetCounters(self, request: Any, context: Any) -> Any:
        return merge_counters(await self._every("GetCounters", request, context))

    async def merged_metrics(self) -> str:
        """``GET /metrics`` of the supervisor: every worker's counters merged (summed)
        and rendered, with ``authz_workers_answered`` saying how many answered."""
        from authz.telemetry.prometheus import render

        calls = [
            self._stub(s).GetCounters(admin_pb2.GetCountersRequest(), timeout=self._timeout)
            for s in self._sockets
        ]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        good = [a for a in answers if not isinstance(a, BaseException)]
        for socket, answer in zip(self._sockets, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("metrics: worker %s did not answer: %s", socket, answer)
        merged = merge_counters(good)
        answered = merged.series.add(name="authz_workers_answered", kind="gauge")
        answered.value = len(good)
        return render(merged)

    async def Explain(self, request: Any, context: Any) -> Any:
        last: grpc.RpcError | None = None
        for socket in self._sockets:
            try:
                return await self._stub(socket).Explain(
                    request, timeout=self._timeout, metadata=auth.caller_metadata()
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    await context.abort(exc.code(), exc.details() or "")
                last = exc
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"no worker answered: {last}")


class SupervisorControl:
    """The control plane of ``--workers N``: one private socket per worker and the
    public server, run in a thread of the supervisor with an event loop of its own."""

    def __init__(
        self, options: ControlOptions, workers: int, telemetry: TelemetryOptions = TELEMETRY_OFF
    ) -> None:
        self.options = options
        self.telemetry = telemetry
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
        self.metrics_port = 0

    def worker_argv(self, index: int) -> list[str]:
        """The ``authz serve`` flags of worker ``index``."""
        if not self.sockets:
            return ["--control", "off"]
        return ["--control-worker-socket", self.sockets[index]]

    def start(self) -> None:
        """Bind and serve (raises what the server raised: ControlConfigError, OSError)."""
        if not self.sockets:
            if self.telemetry.metrics is not None:
                raise ControlConfigError(
                    "--metrics with --workers merges the workers' metrics over the control "
                    "plane's sockets: it needs the control plane (not --control off)"
                )
            return
        started = threading.Event()

        async def serve() -> None:
            fan_out = FanOutAdmin(self.sockets)
            server = ControlServer(self.options, fan_out)
            endpoint = _endpoint(self.telemetry, fan_out)
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            try:
                await server.start()
                self.port = server.port
                if endpoint is not None:
                    await endpoint.start()
                    self.metrics_port = endpoint.port
            except BaseException as exc:
                self._error = exc
                started.set()
                return
            started.set()
            try:
                await self._stop.wait()
            finally:
                if endpoint is not None:
                    await endpoint.aclose()
                await server.aclose()
                await fan_out.aclose()

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


def _endpoint(telemetry: TelemetryOptions, fan_out: FanOutAdmin) -> Any:
    """The supervisor's ``GET /metrics`` (None without ``--metrics``)."""
    if telemetry.metrics is None:
        return None
    from authz.telemetry.options import read_token
    from authz.telemetry.scrape import MetricsEndpoint

    token = read_token(telemetry.metrics_token_file) if telemetry.metrics_token_file else None
    return MetricsEndpoint(telemetry.metrics, fan_out.merged_metrics, token=token)
