"""Parts the fault tests share: a JWKS endpoint that fails on command, a bounded
gRPC load generator, and small probes (health, decision log, worker pids).

Everything binds 127.0.0.1 and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz import devissuer
from authz.demo.stack import free_port
from authz.transport.envoy_grpc import build_check_request

CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: A channel of its own (its own TCP connection), not one shared from grpc's global pool.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


# --------------------------------------------------------------------------- probes


def health(address: str) -> int | None:
    """The overall health status over a fresh connection; None if nothing answers."""
    try:
        with grpc.insecure_channel(address, options=OWN_CONNECTION) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            return int(reply.status)
    except grpc.RpcError:
        return None


class Checker:
    """Blocking Check calls over one channel: (status, reason, decision id)."""

    def __init__(self, address: str, *, own_connection: bool = False) -> None:
        self.channel = grpc.insecure_channel(
            address, options=OWN_CONNECTION if own_connection else []
        )
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)

    def check(
        self, path: str, token: str | None = None, timeout: float = 10.0, **kw: Any
    ) -> tuple[int, str, str]:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        kw.setdefault("method", "GET")
        kw.setdefault("host", "api.local")
        request = build_check_request(path=path, headers=headers, **kw)
        reply = self.stub.Check(request, timeout=timeout)
        meta = reply.dynamic_metadata
        if reply.HasField("ok_response"):
            return 200, meta["reason"], meta["decision_id"]
        return int(reply.denied_response.status.code), meta["reason"], meta["decision_id"]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decision_records(path: Path) -> list[dict[str, Any]]:
    """Every line of a decision log parsed as JSON; fails on a partial or bad line."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    assert text == "" or text.endswith("\n"), f"{path}: the last line is cut: {text[-200:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def child_pids(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry))
    return found


def established_on(pids: Iterable[int], port: int) -> set[int]:
    """Those of ``pids`` holding an established TCP connection on local ``port``."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                local_port = int(cols[1].rsplit(":", 1)[1], 16)
                if local_port == port and cols[3] == "01":  # 01: ESTABLISHED
                    inodes.add(cols[9])
    holders = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        holders.add(pid)
    return holders


# --------------------------------------------------------------------------- a faulty JWKS


class FaultyJwks:
    """A JWKS endpoint (``/jwks.json``) whose behaviour the test sets with :attr:`mode`.

    Modes: ``ok``; ``slow`` (answers after :attr:`delay` seconds, or never if the
    client hangs up first); ``drip`` (headers at once, then the body one byte per
    0.1 s); ``not_json``; ``no_keys`` (a JSON object without ``keys``); ``http_500``;
    ``huge`` (a 10 MB body). :meth:`down` closes the listening socket (connection
    refused) and :meth:`up` binds the same port again.

    :attr:`hits` lists the mode of every request received; :meth:`max_open` is the
    most requests whose client was connected at the same time.
    """

    def __init__(self, keys: Iterable[devissuer.DevKey], port: int = 0) -> None:
        self.keys = list(keys)
        self.port = port or free_port()
        self.mode = "ok"
        self.delay = 5.0
        self.hits: list[str] = []
        self.spans: list[tuple[float, float]] = []  # (received, answered or hung up)
        self._open: dict[int, float] = {}  # requests still being answered: id -> received
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def count(self, mode: str) -> int:
        with self._lock:
            return self.hits.count(mode)

    def open_now(self) -> int:
        """Requests received and not yet answered (nor hung up on)."""
        with self._lock:
            return len(self._open)

    def max_open(self, grace: float = 0.05) -> int:
        """The most requests open at one moment. A request counts as closed
        ``grace`` seconds early: the server notices a hang-up a little after the
        client, which may already have connected again."""
        with self._lock:
            spans = [*self.spans, *((start, float("inf")) for start in self._open.values())]
        events = [(start, 1) for start, _ in spans]
        events += [(max(start, end - grace), -1) for start, end in spans]
        most = now = 0
        for _, step in sorted(events, key=lambda e: (e[0], e[1])):
            now += step
            most = max(most, now)
        return most

    def up(self) -> FaultyJwks:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with owner._lock:
                    mode = owner.mode
                    owner.hits.append(mode)
                    received = time.monotonic()
                    owner._open[id(self)] = received
                try:
                    with contextlib.suppress(OSError):
                        owner._answer(self, mode)
                finally:
                    with owner._lock:
                        del owner._open[id(self)]
                        owner.spans.append((received, time.monotonic()))

            def log_message(self, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _answer(self, handler: BaseHTTPRequestHandler, mode: str) -> None:
        if mode == "slow":
            deadline = time.monotonic() + self.delay
            while (left := deadline - time.monotonic()) > 0:
                if _peer_closed(handler.connection, left):
                    return  # the client gave up: this request is no longer open
            mode = "ok"
        if mode == "drip":
            body = b" " * (10 * 1024 * 1024)
            self._head(handler, 200, len(body))
            for i in range(len(body)):
                handler.wfile.write(body[i : i + 1])
                handler.wfile.flush()
                if _peer_closed(handler.connection):
                    return
                time.sleep(0.1)
            return
        status, body = {
            "ok": (200, json.dumps(devissuer.jwks(self.keys)).encode()),
            "not_json": (200, b"<html><body>502 Bad Gateway</body></html>"),
            "no_keys": (200, b'{"issuer": "https://issuer.test", "kys": []}'),
            "http_500": (500, b'{"error": "internal"}'),
            "huge": (200, b'{"keys": [' + b" " * (10 * 1024 * 1024) + b"]}"),
        }[mode]
        self._head(handler, status, len(body))
        handler.wfile.write(body)

    @staticmethod
    def _head(handler: BaseHTTPRequestHandler, status: int, length: int) -> None:
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(length))
        handler.end_headers()
        handler.wfile.flush()


def _peer_closed(conn: socket.socket, wait: float = 0.0) -> bool:
    """True once the client has hung up (waits up to ``wait`` seconds for it)."""
    readable, _, _ = select.select([conn], [], [], wait)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


# --------------------------------------------------------------------------- bounded load


@dataclass(slots=True)
class Outcome:
    """One Check sent by :class:`Load`: an answer (status, reason) or an RPC error."""

    kind: str  # which of the request kinds it was
    sent: float  # time.monotonic()
    done: float
    status: int | None = None
    reason: str = ""
    decision_id: str = ""
    error: str | None = None  # the grpc status code name of a failed call


@dataclass
class Load:
    """Checks from ``concurrency`` coroutines over ``channels`` connections, in a thread.

    Each coroutine sends the next of ``requests`` (kind, CheckRequest) in turn until
    :meth:`stop` or ``max_seconds``; every call has a ``deadline``. Records every
    outcome; never raises for a failed call.
    """

    address: str
    requests: Sequence[tuple[str, external_auth_pb2.CheckRequest]]
    concurrency: int = 16
    channels: int = 4
    deadline: float = 10.0
    max_seconds: float = 30.0
    pause: float = 0.0  # between two calls of one coroutine (keeps the rate modest)
    outcomes: list[Outcome] = field(default_factory=list)
    in_flight: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fault-load", daemon=True)
        self._payloads = [(kind, r.SerializeToString()) for kind, r in self.requests]

    def start(self) -> Load:
        self._thread.start()
        assert self._started.wait(10), "load did not start"
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._thread.join(timeout=self.deadline + 10)
        assert not self._thread.is_alive(), "load did not stop"
        return self.outcomes

    def answered(self, since: int = 0) -> int:
        return sum(1 for o in self.outcomes[since:] if o.status is not None)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        channels = [
            grpc.aio.insecure_channel(self.address, options=OWN_CONNECTION)
            for _ in range(self.channels)
        ]
        calls = [
            c.unary_unary(
                CHECK_METHOD, response_deserializer=external_auth_pb2.CheckResponse.FromString
            )
            for c in channels
        ]
        end = time.monotonic() + self.max_seconds
        self._started.set()

        async def worker(index: int) -> None:
            call = calls[index % len(calls)]
            n = index
            while not self._stop.is_set() and time.monotonic() < end:
                kind, payload = self._payloads[n % len(self._payloads)]
                n += 1
                outcome = Outcome(kind=kind, sent=time.monotonic(), done=0.0)
                self.in_flight += 1
                try:
                    reply = await call(payload, timeout=self.deadline)
                except grpc.aio.AioRpcError as exc:
                    outcome.error = exc.code().name
                else:
                    meta = reply.dynamic_metadata
                    outcome.reason = meta["reason"]
                    outcome.decision_id = meta["decision_id"]
                    outcome.status = (
                        200
                        if reply.HasField("ok_response")
                        else int(reply.denied_response.status.code)
                    )
                finally:
                    self.in_flight -= 1
                outcome.done = time.monotonic()
                self.outcomes.append(outcome)
                if self.pause:
                    await asyncio.sleep(self.pause)
                elif outcome.error is not None:
                    await asyncio.sleep(0.01)  # no hot loop against a closed port

        try:
            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))
        finally:
            for c in channels:
                await c.close()


def serve(start: Callable[..., Any], policy: Path, *extra: str, timeout: float = 60.0) -> Any:
    """``start_service`` with a generous start-up deadline: on a busy 2-core box two
    workers and a supervisor can take 20 s to import and bind."""
    return start(policy, *extra, wait=False).wait_serving(timeout)


def check_request(path: str, token: str | None = None, **kw: Any) -> external_auth_pb2.CheckRequest:
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    kw.setdefault("method", "GET")
    kw.setdefault("host", "api.local")
    return build_check_request(path=path, headers=headers, **kw)
