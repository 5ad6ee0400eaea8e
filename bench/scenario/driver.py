"""Send a population's requests through Envoy: asyncio, raw HTTP/1.1, one socket per
source address.

Each (client, source address) is a lane: a coroutine that sends that address's
requests in order, each when it is due (or at once when the previous answer came
late), over one keep-alive connection bound to the address (``local_addr``), so
Envoy's ``source.address`` is the client's own. A request whose answer does not
come is recorded with status 0 and the error; the lane reconnects.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.scenario.model import HOST, Event, Population

#: what a deny of an automatic action carries (authz/reasons.py, phase enforce)
ENFORCE_REASONS = frozenset(
    {"caller_blocked", "credential_revoked", "step_up_required", "caller_throttled"}
)


@dataclass(frozen=True, slots=True)
class Result:
    client: str
    source: str
    #: seconds after the run's start: when it was due, and when it was sent
    due: float
    sent: float
    latency: float
    status: int
    #: the deny's reason code (the JSON body's ``error``), "" for an allow
    reason: str
    path: str
    #: the request's tag ("stale": a legitimate client's request meant to fail)
    tag: str = ""

    @property
    def upstream(self) -> bool:
        """It reached the upstream: the echo answers 200, Envoy and authz never do."""
        return self.status == 200


class HttpError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(chunk[:-2])
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def reason_of(status: int, headers: dict[str, str], body: bytes) -> str:
    if status == 200:
        return ""
    if "json" in headers.get("content-type", ""):
        try:
            return str(json.loads(body).get("error", ""))
        except (ValueError, AttributeError):
            pass
    return f"http_{status}"


class Lane:
    def __init__(self, client: str, source: str, events: Sequence[Event]) -> None:
        self.client = client
        self.source = source
        self.events = events
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            host, port, local_addr=(self.source, 0)
        )
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def run(self, host: str, port: int, t0: float, out: list[Result], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        for event in self.events:
            delay = t0 + event.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = loop.time()
            try:
                if self.writer is None:
                    await asyncio.wait_for(self._connect(host, port), timeout)
                assert self.reader is not None and self.writer is not None
                self.writer.write(event.request.encode(HOST))
                status, headers, body = await asyncio.wait_for(read_response(self.reader), timeout)
                reason = reason_of(status, headers, body)
                if headers.get("connection", "").lower() == "close":
                    self._close()
            except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError) as exc:
                status, reason = 0, f"error:{type(exc).__name__}"
                self._close()
            now = loop.time()
            out.append(
                Result(
                    self.client, self.source, event.at, sent - t0, now - sent, status, reason,
                    event.request.path, event.request.tag,
                )
            )  # fmt: skip
        self._close()


@dataclass
class Run:
    results: list[Result]
    #: wall-clock time (time.time()) of the run's offset 0, to place actions' times
    wall_start: float
    seconds: float


async def drive(
    population: Population, host: str, port: int, *, timeout: float = 5.0, lead: float = 0.5
) -> Run:
    """Send every request of ``population`` on schedule; every answer as a :class:`Result`."""
    lanes: list[Lane] = []
    for client in population.clients:
        by_source: dict[str, list[Event]] = {}
        for event in client.events:
            by_source.setdefault(event.source, []).append(event)
        lanes += [Lane(client.name, src, evs) for src, evs in by_source.items()]
    loop = asyncio.get_running_loop()
    t0 = loop.time() + lead
    wall_start = time.time() + lead
    out: list[Result] = []
    await asyncio.gather(*(lane.run(host, port, t0, out, timeout) for lane in lanes))
    return Run(sorted(out, key=lambda r: r.sent), wall_start, loop.time() - t0)


def send_from(
    source: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, str]:
    """One request from ``source`` (a 127.x.y.z address): (status, reason code)."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers={"host": HOST, **(headers or {})})
        reply = conn.getresponse()
        data = reply.read()
        return reply.status, reason_of(
            reply.status, {k.lower(): v for k, v in reply.getheaders()}, data
        )
    finally:
        conn.close()
