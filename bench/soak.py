"""The soak: minutes of mixed valid, invalid and hostile traffic through a real Envoy.

    .venv/bin/python bench/soak.py                      # 10 minutes, gRPC -> results/soak.{md,json}
    .venv/bin/python bench/soak.py --minutes 3 --transport http --rate 2000

What it does, all on 127.0.0.1:

1. Starts ``authz serve`` (the benchmark's policy, bench/fixtures.py, plus a route with a
   per-identity rate rule and one with a body contract; small token cache and rate-limit
   tables) and the Envoy that ``authz envoy-config`` generates for it (bench/run.py's,
   routes answered directly: no upstream is measured). Then fills every bounded table of
   the service once (``--prefill``: new identities, distinct undeclared paths), so that
   what grows afterwards is drift, not a table filling up.
2. Sends each kind of request of the mix once and checks its status (a wrong expectation
   stops the run before any load), then measures capacity, closed loop with
   ``--capacity-connections`` for ``--capacity-seconds``: wrk on the valid-token request
   (the reference, as bench/run.py's scenario C), and this load generator on the mix.
3. Drives an open-loop fixed rate (``--rate``, default ``--fraction`` 80% of the mix's
   capacity, or of wrk's with ``--capacity-of wrk``) of a weighted mix (``build_mix``,
   printed at start): valid tokens of many subjects, a trickle of fresh
   identities, missing, expired, tampered and ``alg: none`` tokens, wrong scopes, unknown
   API keys, undeclared routes of random shapes, path tricks, oversized headers, bodies
   that break their schema and identities hammering a rate-limited route. Every status is
   checked against what its kind must get; a request that cannot connect, is reset or
   times out is an error.
4. Every ``--interval`` (60 s) prints one row: requests, latency p50/p99/p99.9 (from the
   time a request was due, so a stall is not hidden), unexpected statuses, errors, RSS of
   authz and Envoy, authz's open fds, decision-log lines written and the backlog (decisions
   taken but not yet written: the queue is not otherwise exposed), CPU µs per request of
   authz, of Envoy and of this load generator, the machine's load average.
5. A verdict against stated bounds (``BOUNDS``), exit status 0 only if every check holds;
   writes ``--out``/``--name``.md and .json.

It stops by itself: the run is bounded in time (``--minutes``) and in requests
(rate x duration); in-flight requests get ``--timeout``; a watchdog kills everything
if the whole run overstays by two minutes; every process it starts is stopped on exit
(and dies with it if it is killed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import hashlib
import hmac
import itertools
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httptools
import uvloop

from authz import devissuer
from authz.compiled import IDENTITY_HEADER_CACHE_SIZE
from authz.engine import MAX_UNDECLARED_SHAPES
from authz.inventory import DEFAULT_CAPACITY
from bench import fixtures
from bench import run as bench_run
from bench.common import (
    RESULTS,
    Proc,
    cpu_seconds,
    free_port,
    http_ok,
    machine,
    need,
    process_tree,
    rss_kib,
    wait_until,
    wrk,
)

# ----------------------------------------------------------------------------- policy

#: Added to the benchmark's policy. ``search`` holds each subject to 60/min (burst 10):
#: the rate-limited identities exceed it a hundredfold, fresh identities pass once.
#: ``create-item`` validates its body. ``max_keys`` and the token cache are small so
#: that every bounded table is full within the first minute: after that, growth is drift.
EXTRA_POLICY = """\
  - {{name: search, path: /v1/search, methods: [GET], providers: [dev], scopes: [orders:read],
      rate_limits: [{{name: per-caller, rate: 60/m, burst: {hog_burst}, key: [subject]}}]}}
  - name: create-item
    path: /v1/items
    methods: [POST]
    providers: [dev]
    scopes: [orders:write]
    contract:
      max_body_bytes: 4096
      body:
        type: object
        additionalProperties: false
        required: [sku, qty]
        properties:
          sku: {{type: string, pattern: "^[A-Z]{{3}}-[0-9]{{4}}$"}}
          qty: {{type: integer, minimum: 1, maximum: 100}}
rate_limits:
  max_keys: {max_keys}
"""
HOG_BURST = 10
HOG_PER_SECOND = 1.0  # 60/m
CACHE_SIZE = 500  # verified tokens; the fresh-identity trickle evicts within a minute
MAX_KEYS = 200  # rate-limit buckets per table; fresh identities on ``search`` fill it
INVENTORY = DEFAULT_CAPACITY  # undeclared shapes the inventory keeps (not configurable)
API_KEY = "demo-key-0123456789abcdef"  # the sha256 in bench/fixtures.py's policy

#: The drift bounds (see the module's README section and the report for why).
BOUNDS = {
    "rss_mib": 10.0,  # last interval's RSS within +10 MiB ...
    "rss_ratio": 1.10,  # ... or +10% of the second interval's, whichever is larger
    "p99_ratio": 1.5,  # p99 of the last three intervals within 1.5x of intervals 2-4 (medians)
    "fds": 16,  # open fds within +16 of the second interval's
}

# ----------------------------------------------------------------------------- requests

#: Envoy's view of its calls to authz: ext_authz outcomes (ok, denied, error...), the
#: authz cluster's requests (timeouts, active, pending) and Envoy's downstream load.
ENVOY_STATS = (
    r"(ext_authz\.|cluster\.authz\.upstream_rq_(timeout|active|pending_active|pending_overflow|"
    r"total)|cluster\.authz\.upstream_cx_active|ingress_http\.downstream_(rq|cx)_active)"
)
_LATENCY = re.compile(rb'"latency_ms":\s*([0-9.eE+-]+)')
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "admin",
    "api",
    "v2",
    "v3",
    "users",
    "items",
    "cart",
    "export",
    "internal",
    "debug",
]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def http_request(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 keep-alive request, as bytes on the wire."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {fixtures.HOST}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Tokens:
    """The token pools of the mix; minted again before they could expire."""

    def __init__(self, fx: fixtures.Fixture, rng: random.Random) -> None:
        self.fx = fx
        self.rng = rng
        self.fresh = 0
        self.minted_at = 0.0
        self.refresh()

    def refresh(self) -> None:
        fx = self.fx
        self.readers = [fx.mint(f"user-{i:03d}") for i in range(64)]
        self.writers = [fx.mint(f"writer-{i}", "orders:read orders:write") for i in range(8)]
        self.hogs = [fx.mint(f"hog-{i}") for i in range(4)]
        self.wrong_scope = [fx.mint(f"intruder-{i}", "orders:export") for i in range(8)]
        past = time.time() - 900
        self.expired = [
            devissuer.mint(
                fx.key,
                issuer=fixtures.ISSUER,
                subject=f"late-{i}",
                audience=fixtures.AUDIENCE,
                scopes="orders:read",
                ttl=300,
                now=past,
            )
            for i in range(16)
        ]
        self.minted_at = time.monotonic()

    def maybe_refresh(self) -> None:
        if time.monotonic() - self.minted_at > 1500:  # tokens live 3500 s
            self.refresh()

    def reader(self) -> str:
        return self.rng.choice(self.readers)

    def new_identity(self) -> str:
        self.fresh += 1
        return self.fx.mint(f"fresh-{self.fresh}")

    def tampered(self) -> str:
        """A valid token with one character of its payload or signature changed."""
        header, payload, sig = self.reader().split(".")
        parts = [payload, sig]
        which = self.rng.randrange(2)
        text = parts[which]
        # never the last character: it may carry only padding bits
        at = self.rng.randrange(len(text) - 1)
        new = self.rng.choice(_B64.replace(text[at], ""))
        parts[which] = text[:at] + new + text[at + 1 :]
        return ".".join([header, *parts])

    def alg_none(self) -> str:
        payload = self.reader().split(".")[1]
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{payload}."

    def alg_hs256(self) -> str:
        """Key confusion: HS256 keyed with the published key set."""
        payload = self.reader().split(".")[1]
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        signing = f"{header}.{payload}".encode()
        mac = hmac.new(self.fx.jwks_json.encode(), signing, hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(mac)}"


def random_path(rng: random.Random) -> str:
    """An undeclared path of a random shape (words, numbers, hex, random tokens)."""
    segments = []
    for _ in range(rng.randint(1, 5)):
        pick = rng.randrange(4)
        if pick == 0:
            segments.append(rng.choice(_WORDS))
        elif pick == 1:
            segments.append(str(rng.randrange(10**6)))
        elif pick == 2:
            segments.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)))
        else:
            segments.append(f"{rng.getrandbits(64):016x}")
    return "/" + "/".join(segments)


@dataclass
class Kind:
    """One kind of request in the mix: how to make it and which statuses it may get."""

    name: str
    group: str
    weight: int
    expect: frozenset[int]
    make: Callable[[], bytes]
    #: the request reaches authz (Envoy does not answer it itself)
    decided: bool = True
    #: the identity hammering the rate-limited route (200s counted against the quota)
    hog: bool = False


def build_mix(tokens: Tokens, rng: random.Random) -> list[Kind]:
    """The weighted mix. Weights are per 1000 requests."""

    def bearer(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    def order() -> str:
        return f"/v1/orders/{rng.randrange(1, 100_000)}"

    def get(path: Callable[[], str], auth: Callable[[], dict[str, str]]) -> Callable[[], bytes]:
        return lambda: http_request("GET", path(), auth())

    def reader() -> dict[str, str]:
        return bearer(tokens.reader())

    def writer() -> dict[str, str]:
        return bearer(rng.choice(tokens.writers))

    def fixed(path: str) -> Callable[[], str]:
        return lambda: path

    json_type = {"content-type": "application/json"}

    def post(body: bytes, headers: dict[str, str] | None = None) -> Callable[[], bytes]:
        return lambda: http_request(
            "POST", "/v1/items", {**writer(), **(headers or json_type)}, body
        )

    good_body = b'{"sku": "ABC-1234", "qty": 3}'
    ok, e400, e401, e403 = frozenset({200}), frozenset({400}), frozenset({401}), frozenset({403})
    e404, e405, e413, e415 = frozenset({404}), frozenset({405}), frozenset({413}), frozenset({415})

    def trick(path: str, status: int, decided: bool = True) -> Kind:
        return Kind(
            f"path {path[:40]}",
            "path tricks",
            8,
            frozenset({status}),
            get(fixed(path), reader),
            decided=decided,
        )

    return [
        # valid: 200
        Kind("valid get-order", "valid", 300, ok, get(order, reader)),
        Kind("valid list-orders", "valid", 60, ok, get(fixed("/v1/orders"), reader)),
        Kind("valid create-item", "valid", 50, ok, post(good_body)),
        Kind("valid api key", "valid", 40, ok, get(order, lambda: {"x-api-key": API_KEY})),
        Kind("fresh identity get-order", "fresh identities", 25, ok,
             get(order, lambda: bearer(tokens.new_identity()))),
        Kind("fresh identity search", "fresh identities", 15, ok,
             get(fixed("/v1/search"), lambda: bearer(tokens.new_identity()))),
        # rate-limited identities: 429 once their burst is spent
        Kind("hog search", "rate-limited", 60, frozenset({200, 429}),
             get(fixed("/v1/search"), lambda: bearer(rng.choice(tokens.hogs))), hog=True),
        # bad credentials: 401 / 403
        Kind("missing token", "bad credentials", 30, e401, get(order, dict)),
        Kind("expired token", "bad credentials", 30, e401,
             get(order, lambda: bearer(rng.choice(tokens.expired)))),
        Kind("tampered token", "bad credentials", 40, e401,
             get(order, lambda: bearer(tokens.tampered()))),
        Kind("alg none", "bad credentials", 20, e401,
             get(order, lambda: bearer(tokens.alg_none()))),
        Kind("alg HS256 (key confusion)", "bad credentials", 10, e401,
             get(order, lambda: bearer(tokens.alg_hs256()))),
        Kind("garbage bearer", "bad credentials", 10, e401,
             get(order, lambda: bearer(f"{rng.getrandbits(128):x}.x"))),
        Kind("unknown api key", "bad credentials", 30, e401,
             get(order, lambda: {"x-api-key": f"k-{rng.getrandbits(96):024x}"})),
        Kind("wrong scope", "bad credentials", 30, e403,
             get(order, lambda: bearer(rng.choice(tokens.wrong_scope)))),
        # undeclared: 404 (random shapes: the inventory is bounded), 405
        Kind("undeclared random path", "undeclared", 100, e404,
             get(lambda: random_path(rng), dict)),
        Kind("undeclared with token", "undeclared", 10, e404,
             get(lambda: random_path(rng), reader)),
        Kind("method not allowed", "undeclared", 10, e405,
             lambda: http_request("DELETE", order(), reader())),
        # path tricks (status: what Envoy's normalisation and authz's canonical path give)
        trick("//v1//orders//42", 200),
        trick("/v1/orders/./42", 200),
        trick("/v1/x/../orders/42", 200),
        trick("/v1/orders/%34%32", 200),
        trick("/v1/orders/%2e%2e/%2e%2e/internal/metrics", 401),
        trick("/v1/orders/%c0%ae%c0%ae/secret", 400),
        trick("/v1/orders/%e0%80%af", 400),
        trick("/v1/orders/42%2f..%2fexport", 400, decided=False),
        trick("/v1/orders/..%5c..%5cinternal", 400, decided=False),
        trick("/V1/Orders/42", 404),
        # oversized headers: Envoy answers 431 (its limit is 60 KiB)
        Kind("oversized header", "oversized headers", 10, frozenset({431}),
             get(order, lambda: {**reader(), "x-pad": "a" * 64 * 1024}), decided=False),
        # bodies failing their contract: 400 / 413 / 415
        Kind("body breaks schema", "bad bodies", 20, e400, post(b'{"sku": "bad", "qty": 0}')),
        Kind("body unknown field", "bad bodies", 10, e400,
             post(b'{"sku": "ABC-1234", "qty": 1, "admin": true}')),
        Kind("body malformed", "bad bodies", 10, e400, post(b'{"sku": "ABC-1234", "qty":')),
        Kind("body duplicate key", "bad bodies", 5, e400,
             post(b'{"sku": "ABC-1234", "qty": 1, "qty": 2}')),
        Kind("body wrong type", "bad bodies", 5, e415,
             post(good_body, {"content-type": "text/plain"})),
        Kind("body too large", "bad bodies", 5, e413,
             post(b'{"sku": "' + b"A" * 5000 + b'", "qty": 1}'), decided=False),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- histogram


class Histogram:
    """Latencies in log buckets of ~1% (microseconds): cheap to add, percentiles exact
    to a bucket, no sorting on the driver's event loop."""

    SCALE = 100.0  # buckets per factor e

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0
        self.max_us = 0.0

    def add(self, us: float) -> None:
        self.counts[int(math.log(max(us, 1.0)) * self.SCALE)] += 1
        self.n += 1
        if us > self.max_us:
            self.max_us = us

    def percentile(self, pct: float) -> float:
        if not self.n:
            return 0.0
        rank = math.ceil(pct / 100 * self.n)
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(self.max_us, math.exp((bucket + 1) / self.SCALE))
        return self.max_us


# ----------------------------------------------------------------------------- driver


@dataclass
class Window:
    """What happened in one sampling interval (requests counted when they complete)."""

    started: float
    sent: int = 0
    done: int = 0
    decided: int = 0
    latency: Histogram = field(default_factory=Histogram)
    valid_latency: Histogram = field(default_factory=Histogram)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    hog_admitted: int = 0
    max_lag_ms: float = 0.0
    max_connections: int = 0
    seconds: float = 0.0
    #: unexpected 403s without a body: Envoy's own answer when the ext_authz call failed
    fail_closed: int = 0


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to Envoy, one request at a time."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.kind: Kind | None = None
        self.due = 0.0
        self.body = 0  # bytes of the response body
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, kind: Kind, payload: bytes, due: float) -> None:
        assert self.transport is not None
        self.kind, self.due, self.body = kind, due, 0
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail("bad_response")

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def on_message_complete(self) -> None:
        kind, self.kind = self.kind, None
        if kind is None:  # a response nobody asked for
            self.fail("unsolicited_response")
            return
        keep = self.parser.should_keep_alive()
        self.driver.finished(kind, self.parser.get_status_code(), self.due, self.body)
        if keep and not self.closed:
            self.driver.release(self)
        else:
            self.close()
        self.driver.refill()

    def fail(self, why: str) -> None:
        kind, self.kind = self.kind, None
        if kind is not None:
            self.driver.failed(kind, why)
        self.close()
        self.driver.refill()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.driver.forget(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.kind is not None:
            self.fail("reset")
        self.closed = True
        self.driver.forget(self)


class Driver:
    """Open-loop load at a fixed rate over a pool of keep-alive connections.

    Request i is due at ``start + i / rate`` whatever happened to the others; it goes
    out on an idle connection, on a new one (up to ``max_connections``), or waits in
    a bounded backlog. Latency runs from when it was due to its response, so a slow
    or stalled server shows in the percentiles instead of slowing the load down.
    """

    def __init__(
        self,
        port: int,
        mix: list[Kind],
        rng: random.Random,
        *,
        timeout: float,
        max_connections: int,
        max_backlog: int,
    ) -> None:
        self.port = port
        self.mix = mix
        self.rng = rng
        self.cum_weights = list(itertools.accumulate(k.weight for k in mix))
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_backlog = max_backlog
        self.idle: list[Conn] = []
        self.busy: set[Conn] = set()
        self.connecting = 0
        self.backlog: list[tuple[Kind, bytes, float]] = []
        self.window = Window(time.monotonic())
        self.hog_admitted = 0
        self.first_hog = 0.0
        self.last_hog = 0.0
        self.sent = 0
        self.target = 0  # closed loop: requests kept in flight (0: open loop)
        self.budget: int | None = None  # closed loop: requests to send in all
        self.loop = asyncio.get_running_loop()

    # --- accounting
    def finished(self, kind: Kind, status: int, due: float, body: int) -> None:
        now = time.monotonic()
        w = self.window
        w.done += 1
        us = (now - due) * 1e6
        w.latency.add(us)
        if kind.group == "valid":
            w.valid_latency.add(us)
        w.statuses[kind.name, status] += 1
        if kind.decided:
            w.decided += 1
        if status not in kind.expect:
            w.unexpected[kind.name, status] += 1
            if status == 403 and not body:  # every deny of authz's has a JSON body
                w.fail_closed += 1
        if kind.hog:
            self.last_hog = now
            if status == 200:
                w.hog_admitted += 1
                self.hog_admitted += 1

    def failed(self, kind: Kind, why: str) -> None:
        self.window.done += 1
        self.window.errors[why] += 1
        self.window.statuses[kind.name, 0] += 1

    # --- connections
    def release(self, conn: Conn) -> None:
        self.busy.discard(conn)
        if self.backlog:
            kind, payload, due = self.backlog.pop(0)
            self.busy.add(conn)
            conn.send(kind, payload, due)
        else:
            self.idle.append(conn)

    def forget(self, conn: Conn) -> None:
        self.busy.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    async def _connect_and_send(self, kind: Kind, payload: bytes, due: float) -> None:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: Conn(self), "127.0.0.1", self.port),
                self.timeout,
            )
        except (TimeoutError, OSError):
            self.connecting -= 1
            self.failed(kind, "connect")
            return
        self.connecting -= 1
        self.busy.add(conn)
        conn.send(kind, payload, due)
        # requests that queued while this connection was opening
        n = len(self.busy) + len(self.idle)
        self.window.max_connections = max(self.window.max_connections, n)

    def dispatch(self, due: float) -> None:
        kind = self.rng.choices(self.mix, cum_weights=self.cum_weights)[0]
        payload = kind.make()
        self.sent += 1
        self.window.sent += 1
        if kind.hog and not self.first_hog:
            self.first_hog = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                self.busy.add(conn)
                conn.send(kind, payload, due)
                return
        if len(self.busy) + self.connecting < self.max_connections:
            self.connecting += 1
            self.loop.create_task(self._connect_and_send(kind, payload, due))
        elif len(self.backlog) < self.max_backlog:
            self.backlog.append((kind, payload, due))
        else:
            self.failed(kind, "driver_backlog_full")

    def sweep(self) -> None:
        """Time out requests without an answer after ``timeout``."""
        now = time.monotonic()
        for conn in list(self.busy):
            if conn.kind is not None and now - conn.due > self.timeout:
                conn.fail("timeout")
        while self.backlog and now - self.backlog[0][2] > self.timeout:
            kind, _, _ = self.backlog.pop(0)
            self.failed(kind, "timeout")

    def refill(self) -> None:
        """Closed loop: send the next request as soon as one is answered."""
        while self.target and self.in_flight() < self.target:
            if self.budget is not None and self.sent >= self.budget:
                return
            self.dispatch(time.monotonic())

    def in_flight(self) -> int:
        return len(self.busy) + self.connecting + len(self.backlog)

    def close_all(self) -> None:
        for conn in [*self.idle, *self.busy]:
            conn.close()

    # --- the schedule
    async def closed_loop(
        self,
        connections: int,
        *,
        seconds: float = math.inf,
        count: int = 0,
        kinds: list[Kind] | None = None,
    ) -> tuple[Window, float]:
        """Closed loop over ``connections`` for ``seconds`` or ``count`` requests (of
        ``kinds``, default the mix): the window and the requests answered per second,
        that is how many this machine answers (Envoy, authz and this load generator
        together)."""
        mix, cum = self.mix, self.cum_weights
        if kinds is not None:
            self.mix = kinds
            self.cum_weights = list(itertools.accumulate(k.weight for k in kinds))
        start = time.monotonic()
        self.window = Window(start)
        self.sent = 0
        self.budget = count or None
        self.target = connections
        try:
            self.refill()
            while time.monotonic() - start < seconds and (not count or self.sent < count):
                await asyncio.sleep(0.05)
                self.sweep()
            self.target = 0
            elapsed = time.monotonic() - start
            rate = self.window.done / elapsed
            deadline = time.monotonic() + self.timeout + 0.5
            while self.in_flight() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
                self.sweep()
        finally:
            self.target, self.budget = 0, None
            self.mix, self.cum_weights = mix, cum
        window, self.window = self.window, Window(time.monotonic())
        window.seconds = elapsed
        return window, rate

    async def run(
        self,
        rate: float,
        seconds: float,
        interval: float,
        on_interval: Callable[[Window, bool], None],
    ) -> None:
        start = time.monotonic()
        self.sent = 0  # this run's requests (not the capacity runs')
        total = int(rate * seconds)  # the request budget: never more than this
        end = start + seconds
        next_sample = start + interval
        next_sweep = start + 0.25
        self.window = Window(start)
        i = 0
        while i < total:
            now = time.monotonic()
            due_count = min(total, int((now - start) * rate) + 1)
            if i < due_count:
                lag = (now - (start + i / rate)) * 1000
                self.window.max_lag_ms = max(self.window.max_lag_ms, lag)
            while i < due_count:
                self.dispatch(now)
                i += 1
            if now >= next_sweep:
                self.sweep()
                next_sweep = now + 0.25
            if now >= next_sample and next_sample < end - 1:  # the last row ends with the run
                self._rotate(on_interval, last=False)
                next_sample += interval
            # wake for the next due request (uvloop's timers tick in milliseconds)
            await asyncio.sleep(max(0.001, start + i / rate - time.monotonic()))
        # let the last requests finish, then time out what is left
        deadline = time.monotonic() + self.timeout + 0.5
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            self.sweep()
        for conn in list(self.busy):
            conn.fail("timeout")
        for kind, _, _ in self.backlog:
            self.failed(kind, "timeout")
        self.backlog.clear()
        self._rotate(on_interval, last=True)
        self.close_all()

    def _rotate(self, on_interval: Callable[[Window, bool], None], *, last: bool) -> None:
        done, self.window = self.window, Window(time.monotonic())
        on_interval(done, last)


# ----------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a child gets SIGTERM if the soak itself is killed
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class Child(Proc):
    """A :class:`Proc` that also dies with the soak (``kill -9`` included)."""

    def start(self) -> Child:
        with open(self.log, "ab") as fh:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    def kill_group(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.popen.pid, signal.SIGKILL)


def child(p: Proc) -> Child:
    return Child(p.name, p.argv, p.log, p.env)


@dataclass
class Sample:
    """Process figures at the end of one interval."""

    authz_rss_kib: int
    authz_hwm_kib: int
    envoy_rss_kib: int
    authz_fds: int
    authz_threads: int
    authz_cpu_s: float
    envoy_cpu_s: float
    log_lines: int
    log_bytes: int
    loadavg: float
    driver_cpu_s: float
    decision_p99_ms: float
    decision_max_ms: float
    #: /proc/pressure/cpu "some" total (µs some task waited for a CPU), /proc/stat ticks
    pressure_us: int
    cpu_ticks: tuple[int, int]  # (idle + iowait, all)
    envoy_stats: dict[str, int]  # ENVOY_STATS from Envoy's admin


def machine_cpu() -> tuple[int, tuple[int, int]]:
    """CPU pressure (PSI "some" total, µs) and (idle, total) ticks of the whole machine:
    how much the machine's other work competes with the soak's processes."""
    pressure = 0
    with contextlib.suppress(OSError, ValueError), open("/proc/pressure/cpu") as fh:
        pressure = int(fh.readline().rsplit("total=", 1)[1])
    ticks = (0, 0)
    with contextlib.suppress(OSError, ValueError), open("/proc/stat") as fh:
        values = [int(x) for x in fh.readline().split()[1:]]
        ticks = (values[3] + values[4], sum(values))
    return pressure, ticks


class Sampler:
    """Reads /proc for authz's and Envoy's processes, and counts decision-log lines."""

    def __init__(self, authz: Proc, envoy: Proc, log: Path, admin: int) -> None:
        self.authz, self.envoy, self.log, self.admin = authz, envoy, log, admin
        self.offset = 0
        self.lines = 0
        #: the engine's own time per decision (the log's latency_ms), since the last take
        self.decisions = Histogram()

    def _count_log(self) -> None:
        with contextlib.suppress(FileNotFoundError), open(self.log, "rb") as fh:
            fh.seek(self.offset)
            while chunk := fh.read(1 << 20):
                end = chunk.rfind(b"\n") + 1  # whole lines only; the rest next time
                if not end:
                    break
                chunk = chunk[:end]
                self.offset += end
                self.lines += chunk.count(b"\n")
                for value in _LATENCY.findall(chunk):
                    self.decisions.add(float(value) * 1000)
                fh.seek(self.offset)

    def take(self) -> Sample:
        tree = process_tree(self.authz.pid)
        rss = hwm = fds = threads = 0
        for pid in tree:
            with contextlib.suppress(OSError):
                r, h = rss_kib(pid)
                rss, hwm = rss + r, hwm + h
                fds += len(os.listdir(f"/proc/{pid}/fd"))
                threads += len(os.listdir(f"/proc/{pid}/task"))
        self._count_log()
        decisions, self.decisions = self.decisions, Histogram()
        pressure, ticks = machine_cpu()
        stats: dict[str, int] = {}
        with contextlib.suppress(Exception):
            url = f"http://127.0.0.1:{self.admin}/stats?filter={ENVOY_STATS}"
            with urllib.request.urlopen(url, timeout=2) as reply:
                for line in reply.read().decode().splitlines():
                    name, _, value = line.partition(": ")
                    if value.strip().isdigit():
                        stats[name] = int(value)
        return Sample(
            authz_rss_kib=rss,
            authz_hwm_kib=hwm,
            envoy_rss_kib=rss_kib(self.envoy.pid)[0],
            authz_fds=fds,
            authz_threads=threads,
            authz_cpu_s=cpu_seconds(tree),
            envoy_cpu_s=cpu_seconds([self.envoy.pid]),
            log_lines=self.lines,
            log_bytes=self.offset,
            loadavg=os.getloadavg()[0],
            driver_cpu_s=sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
            decision_p99_ms=decisions.percentile(99) / 1000,
            decision_max_ms=decisions.max_us / 1000,
            pressure_us=pressure,
            cpu_ticks=ticks,
            envoy_stats=stats,
        )


# ----------------------------------------------------------------------------- the run


@dataclass
class Row:
    """One printed row: an interval's figures."""

    minute: int
    seconds: float
    sent: int
    done: int
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    valid_p99_ms: float
    unexpected: int
    fail_closed: int
    errors: int
    authz_rss_mib: float
    envoy_rss_mib: float
    authz_fds: int
    authz_threads: int
    authz_cpu_us: float
    envoy_cpu_us: float
    driver_cpu_us: float
    decision_p99_ms: float
    decision_max_ms: float
    cpu_pressure_pct: float
    machine_idle_pct: float
    #: Envoy's counters over the interval (gauges, ``_active``, at its end)
    envoy: dict[str, int]
    decided: int
    log_lines: int
    log_backlog: int
    hog_admitted: int
    max_lag_ms: float
    max_connections: int
    loadavg: float
    unexpected_detail: dict[str, int]
    error_detail: dict[str, int]


HEADER = (
    "| min | req/s | p50 ms | p99 ms | p99.9 ms | engine p99 ms | unexpected | errors | "
    "authz RSS MiB | "
    "Envoy RSS MiB | authz fds | authz CPU µs/req | Envoy CPU µs/req | driver CPU µs/req | "
    "log lines | log backlog | load | CPU pressure % | machine idle % |"
)
RULE = "| " + " | ".join(["---:"] * 19) + " |"


def row_line(r: Row) -> str:
    return (
        f"| {r.minute} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.p999_ms:.2f} | "
        f"{r.decision_p99_ms:.2f} | "
        f"{r.unexpected} | {r.errors} | {r.authz_rss_mib:.1f} | {r.envoy_rss_mib:.1f} | "
        f"{r.authz_fds} | {r.authz_cpu_us:.0f} | {r.envoy_cpu_us:.0f} | {r.driver_cpu_us:.0f} | "
        f"{r.log_lines:,} | "
        f"{r.log_backlog:,} | {r.loadavg:.2f} | {r.cpu_pressure_pct:.0f} | "
        f"{r.machine_idle_pct:.0f} |"
    )


def verdict(
    rows: list[Row],
    interval: float,
    quota: dict[str, float],
    capacity: dict[str, float],
    prefill: dict[str, float],
) -> list[dict[str, Any]]:
    """Every check: name, bound, observed, ok (None: not judged, too short a run)."""
    checks: list[dict[str, Any]] = []
    judged = len(rows) >= 3 and interval >= 30
    identities = max(CACHE_SIZE, MAX_KEYS, IDENTITY_HEADER_CACHE_SIZE)
    shapes = max(INVENTORY, MAX_UNDECLARED_SHAPES)
    got = (prefill.get("identities", 0), prefill.get("undeclared_shapes", 0))
    bad = prefill.get("unexpected", 0) + prefill.get("errors", 0)
    checks.append(
        {
            "check": "every bounded table filled before measuring (new identities, "
            "undeclared shapes; unexpected statuses and errors in it)",
            "bound": f">= {identities:,}, >= {shapes:,}; 0",
            "observed": f"{got[0]:,.0f}, {got[1]:,.0f}; {bad:.0f}",
            "ok": (got[0] >= identities and got[1] >= shapes and bad == 0) if judged else None,
        }
    )
    if "mix" in capacity:
        bad = capacity["mix_unexpected"] + capacity["mix_errors"]
        checks.append({"check": "unexpected statuses and errors, closed-loop capacity run",
                       "bound": "0", "observed": f"{bad:.0f}", "ok": bad == 0})  # fmt: skip
    unexpected = sum(r.unexpected for r in rows)
    errors = sum(r.errors for r in rows)
    checks.append(
        {
            "check": "unexpected statuses, every interval",
            "bound": "0",
            "observed": str([r.unexpected for r in rows]),
            "ok": unexpected == 0,
        }
    )
    checks.append(
        {
            "check": "errors (connect, reset, timeout), every interval",
            "bound": "0",
            "observed": str([r.errors for r in rows]),
            "ok": errors == 0,
        }
    )
    over = quota["admitted"] - quota["quota"]
    checks.append(
        {
            "check": "rate-limited identities admitted vs quota (burst + rate x time)",
            "bound": f"<= {quota['quota']:.0f}",
            "observed": f"{quota['admitted']:.0f}",
            "ok": over <= 0,
        }
    )
    base, last = (rows[1], rows[-1]) if len(rows) >= 2 else (rows[0], rows[-1])
    for who in ("authz", "envoy"):
        b = getattr(base, f"{who}_rss_mib")
        x = getattr(last, f"{who}_rss_mib")
        limit = max(b + BOUNDS["rss_mib"], b * BOUNDS["rss_ratio"])
        checks.append(
            {
                "check": f"{who} RSS, last interval vs the second (MiB)",
                "bound": f"<= {limit:.1f}",
                "observed": f"{b:.1f} -> {x:.1f}",
                "ok": (x <= limit) if judged else None,
            }
        )
    # p99 is noisy on a shared machine: with six rows or more, the median of the first
    # three steady rows against the median of the last three (one noisy row cannot
    # decide; a real drift moves all three). End to end (queues, Envoy, the machine's
    # other work included) and the engine's own time per decision (none of those).
    for name, label in (("p99_ms", "p99"), ("decision_p99_ms", "engine p99")):
        if len(rows) >= 6:
            early = statistics.median(getattr(r, name) for r in rows[1:4])
            late = statistics.median(getattr(r, name) for r in rows[-3:])
            what = f"{label}, median of the last 3 intervals vs of intervals 2-4 (ms)"
        else:
            early, late = getattr(base, name), getattr(last, name)
            what = f"{label}, last interval vs the second (ms)"
        limit = early * BOUNDS["p99_ratio"]
        checks.append(
            {
                "check": what,
                "bound": f"<= {limit:.2f}",
                "observed": f"{early:.2f} -> {late:.2f}",
                "ok": (late <= limit) if judged else None,
            }
        )
    limit = base.authz_fds + BOUNDS["fds"]
    checks.append(
        {
            "check": "authz open fds, last interval vs the second",
            "bound": f"<= {limit}",
            "observed": f"{base.authz_fds} -> {last.authz_fds}",
            "ok": (last.authz_fds <= limit) if judged else None,
        }
    )
    backlog = max(r.log_backlog for r in rows)
    bound = max(1000, int(max(r.rps for r in rows)))  # at most a second of decisions
    checks.append(
        {
            "check": "decision-log backlog at each sample (decisions not yet written)",
            "bound": f"<= {bound}",
            "observed": f"max {backlog}",
            "ok": backlog <= bound,
        }
    )
    return checks  # fmt: skip


def letters(n: int) -> str:
    """``n`` in base 26, letters only: a path segment no shape rule collapses."""
    out = ""
    while True:
        n, r = divmod(n, 26)
        out = chr(97 + r) + out
        if not n:
            return out


def prefill_plan(tokens: Tokens, factor: float) -> list[tuple[str, Kind, int]]:
    """Requests that fill every bounded table once before anything is measured: new
    identities (verified-token cache, identity-header cache, rate-limit buckets on
    ``search``) and distinct undeclared path shapes (inventory, undeclared counters),
    ``factor`` times the largest bound of each."""
    identities = max(CACHE_SIZE, MAX_KEYS, IDENTITY_HEADER_CACHE_SIZE)
    shapes = max(INVENTORY, MAX_UNDECLARED_SHAPES)
    counter = itertools.count()
    fresh = Kind(
        "prefill new identity",
        "prefill",
        1,
        frozenset({200}),
        lambda: http_request(
            "GET", "/v1/search", {"authorization": f"Bearer {tokens.new_identity()}"}
        ),
    )
    shape = Kind("prefill undeclared shape", "prefill", 1, frozenset({404}),
                 lambda: http_request("GET", f"/scan/{letters(next(counter))}/x"))  # fmt: skip
    return [
        ("identities", fresh, math.ceil(identities * factor)),
        ("undeclared_shapes", shape, math.ceil(shapes * factor)),
    ]


def fill_times(mix: list[Kind], rate: float) -> dict[str, float]:
    """Seconds until each bounded table is full, from the mix's shares at ``rate``."""
    total = sum(k.weight for k in mix)

    def per_second(*names: str) -> float:
        return rate * sum(k.weight for k in mix if k.name in names) / total

    fresh = per_second("fresh identity get-order", "fresh identity search")
    paths = per_second("undeclared random path", "undeclared with token")
    return {
        "token cache": CACHE_SIZE / fresh,
        "identity-header cache": IDENTITY_HEADER_CACHE_SIZE / fresh,
        "rate-limit buckets": MAX_KEYS / per_second("fresh identity search"),
        "inventory": INVENTORY / paths,
        "undeclared counters": MAX_UNDECLARED_SHAPES / paths,
    }


def measure_capacity(url: str, headers: dict[str, str], seconds: float, conns: int) -> float:
    wrk(url, duration=max(1.0, min(3.0, seconds / 5)), connections=conns, headers=headers)
    load = wrk(url, duration=seconds, connections=conns, headers=headers)
    if load.errors:
        raise RuntimeError(f"capacity run: {load.errors} errors of {load.requests}")
    return load.rps


def check_expectations(port: int, mix: list[Kind]) -> list[str]:
    """Send each kind once on a fresh connection; what does not get its status."""
    import socket

    wrong = []
    for kind in mix:
        if kind.hog:
            continue
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(kind.make())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        status = int(line.split()[1]) if line.startswith("HTTP/") else 0
        if status not in kind.expect:
            wrong.append(f"{kind.name}: expected {sorted(kind.expect)}, got {status}")
    return wrong


@contextlib.contextmanager
def watchdog(seconds: float, procs: list[Child]) -> Iterator[None]:
    """Kill everything and exit if the run overstays ``seconds`` (it should never)."""

    def fire() -> None:
        print(f"soak: watchdog: still running after {seconds:.0f}s; killing", file=sys.stderr)
        for p in procs:
            p.kill_group()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Soak authz through Envoy (module docstring).")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to drive the load")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="requests/s (default: --fraction of the measured capacity)",
    )
    parser.add_argument("--fraction", type=float, default=0.8, help="of capacity (default 0.8)")
    parser.add_argument(
        "--transport",
        choices=["grpc", "http"],
        default="grpc",
        help="Envoy -> authz (default grpc)",
    )
    parser.add_argument("--workers", type=int, default=1, help="authz serve --workers")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per sample row")
    parser.add_argument(
        "--capacity-of",
        choices=["mix", "wrk"],
        default="mix",
        help="the rate is --fraction of: the mix's closed-loop capacity through "
        "this load generator (default), or wrk's on the valid-token request",
    )
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument("--prefill", type=float, default=1.25,
                        help="before measuring, fill every bounded table this many times "
                        "its bound (0: no prefill)")  # fmt: skip
    parser.add_argument("--capacity-connections", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--name", default="soak", help="results file name (without suffix)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)  # fmt: skip
    if args.minutes <= 0 or args.interval <= 0 or args.rate < 0 or args.workers < 1:
        parser.error("--minutes and --interval must be > 0, --rate >= 0, --workers >= 1")
    if not 0 < args.fraction <= 1:
        parser.error("--fraction must be in (0, 1]")
    for tool in ("wrk", "envoy"):
        need(tool)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    work = Path(tempfile.mkdtemp(prefix="authz-soak-"))
    fx = fixtures.make(work / "fixture", cache_size=CACHE_SIZE)
    with open(fx.policy, "a") as fh:
        fh.write(EXTRA_POLICY.format(hog_burst=HOG_BURST, max_keys=MAX_KEYS))
    settings = bench_run.Settings(
        duration=0, runs=0, warmup=0, connections=0, h2_clients=0, h2_streams=0, work=work
    )
    listen, admin, port = free_port(), free_port(), free_port()
    config = bench_run.authz_envoy(fx, listen, admin, port, args.transport)
    authz = child(
        bench_run.authz_proc(fx, "soak", settings, workers=args.workers, **{args.transport: port})
    )
    envoy = child(bench_run.envoy_proc(config, "soak", settings, admin))
    decision_log = work / "soak.decisions.log"
    seconds = args.minutes * 60
    budget = 2 * (args.capacity_seconds + 3) + seconds + 3 * args.timeout + 120
    started: list[Child] = []
    ok = False
    try:
        with watchdog(budget, [authz, envoy]):
            for p in (authz, envoy):
                p.start()
                started.append(p)
            probe: Callable[[], bool] = (
                (lambda: bench_run.grpc_ready(port)) if args.transport == "grpc" else
                (lambda: http_ok(f"http://127.0.0.1:{port}/healthz"))
            )  # fmt: skip
            wait_until("authz", probe, 30, authz)
            wait_until("envoy", lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), 30, envoy)
            ok = soak(args, fx, authz, envoy, (listen, admin), decision_log, seconds, argv)
    except KeyboardInterrupt as why:
        print(f"soak: interrupted ({why}); stopping", file=sys.stderr)
    finally:
        for p in reversed(started):
            p.stop()
        with contextlib.suppress(OSError):
            decision_log.unlink()  # ~1 GB for ten minutes
        if args.keep or not ok:
            print(f"soak: work files (logs) in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def soak(
    args: argparse.Namespace,
    fx: fixtures.Fixture,
    authz: Proc,
    envoy: Proc,
    ports: tuple[int, int],
    decision_log: Path,
    seconds: float,
    argv: list[str] | None,
) -> bool:
    listen, admin = ports
    at_start = machine()  # the machine's load before any of ours
    rng = random.Random(args.seed)
    tokens = Tokens(fx, rng)
    mix = build_mix(tokens, rng)
    wrong = check_expectations(listen, mix)
    if wrong:
        print("soak: the mix's expectations do not hold:\n  " + "\n  ".join(wrong))
        return False
    url = f"http://127.0.0.1:{listen}{fixtures.PATH}"
    bearer = {"authorization": f"Bearer {fx.token}", "host": fixtures.HOST}
    capacity: dict[str, float] = {}
    if not args.rate:
        # the reference: the one valid-token request, wrk (as bench/run.py's scenario C)
        capacity["wrk"] = measure_capacity(
            url, bearer, args.capacity_seconds, args.capacity_connections
        )
        print(f"capacity: {capacity['wrk']:,.0f} req/s (wrk, "
              f"{args.capacity_connections} connections, {args.capacity_seconds:g} s, "
              "valid token)", flush=True)  # fmt: skip
    total_weight = sum(k.weight for k in mix)
    groups: Counter[str] = Counter()
    for k in mix:
        groups[k.group] += k.weight
    print("mix: " + ", ".join(f"{g} {w / total_weight:.1%}" for g, w in groups.items()))

    sampler = Sampler(authz, envoy, decision_log, admin)
    time.sleep(0.5)  # the decision log drains every 50 ms
    prev = sampler.take()
    expected_decisions = prev.log_lines  # the expectation checks' own decisions
    rows: list[Row] = []
    windows: list[Window] = []
    pending: list[asyncio.Future[None]] = []

    def on_interval(w: Window, last: bool) -> None:
        # /proc and the log are read off the event loop (the load keeps its schedule)
        pending.append(asyncio.ensure_future(asyncio.to_thread(record, w, last)))

    lock = threading.Lock()

    def record(w: Window, last: bool) -> None:
        nonlocal prev, expected_decisions
        with lock:
            if last:
                time.sleep(0.3)  # the decision log drains every 50 ms
            s = sampler.take()
            elapsed = time.monotonic() - w.started
            n = max(1, w.done)
            expected_decisions += w.decided
            r = Row(
                minute=len(rows) + 1,
                seconds=elapsed,
                sent=w.sent,
                done=w.done,
                rps=w.done / elapsed if elapsed else 0.0,
                p50_ms=w.latency.percentile(50) / 1000,
                p99_ms=w.latency.percentile(99) / 1000,
                p999_ms=w.latency.percentile(99.9) / 1000,
                max_ms=w.latency.max_us / 1000,
                valid_p99_ms=w.valid_latency.percentile(99) / 1000,
                unexpected=sum(w.unexpected.values()),
                fail_closed=w.fail_closed,
                errors=sum(w.errors.values()),
                authz_rss_mib=s.authz_rss_kib / 1024,
                envoy_rss_mib=s.envoy_rss_kib / 1024,
                authz_fds=s.authz_fds,
                authz_threads=s.authz_threads,
                authz_cpu_us=(s.authz_cpu_s - prev.authz_cpu_s) / n * 1e6,
                envoy_cpu_us=(s.envoy_cpu_s - prev.envoy_cpu_s) / n * 1e6,
                driver_cpu_us=(s.driver_cpu_s - prev.driver_cpu_s) / n * 1e6,
                decision_p99_ms=s.decision_p99_ms,
                decision_max_ms=s.decision_max_ms,
                envoy={
                    k: v if k.endswith("_active") else v - prev.envoy_stats.get(k, 0)
                    for k, v in s.envoy_stats.items()
                },
                cpu_pressure_pct=(s.pressure_us - prev.pressure_us) / (elapsed * 1e4),
                machine_idle_pct=(s.cpu_ticks[0] - prev.cpu_ticks[0])
                * 100
                / max(1, s.cpu_ticks[1] - prev.cpu_ticks[1]),
                decided=w.decided,
                log_lines=s.log_lines - prev.log_lines,
                log_backlog=max(0, expected_decisions - s.log_lines),
                hog_admitted=w.hog_admitted,
                max_lag_ms=w.max_lag_ms,
                max_connections=w.max_connections,
                loadavg=s.loadavg,
                unexpected_detail={f"{k} -> {st}": c for (k, st), c in w.unexpected.items()},
                error_detail=dict(w.errors),
            )
            prev = s
            rows.append(r)
            windows.append(w)
            print(row_line(r), flush=True)
            if r.unexpected_detail:
                print(f"    unexpected: {r.unexpected_detail}; of which {r.fail_closed} "
                      "403 without a body (Envoy: the ext_authz call failed or timed out)",
                      flush=True)  # fmt: skip
            if r.error_detail:
                print(f"    errors: {r.error_detail}", flush=True)
            if r.unexpected or r.errors:
                print(f"    envoy: {r.envoy}", flush=True)

    def baseline() -> None:
        nonlocal prev, expected_decisions
        time.sleep(0.5)  # the decision log drains every 50 ms
        prev = sampler.take()
        expected_decisions = prev.log_lines

    rate = args.rate
    fill: dict[str, float] = {}
    prefill: dict[str, float] = {}

    async def drive() -> Driver:
        nonlocal rate
        driver = Driver(listen, mix, rng, timeout=args.timeout,
                        max_connections=args.max_connections, max_backlog=100)  # fmt: skip

        async def refresh() -> None:
            while True:
                await asyncio.sleep(60)
                tokens.maybe_refresh()

        conns = args.capacity_connections
        if args.prefill > 0:
            started = time.monotonic()
            for what, kind, count in prefill_plan(tokens, args.prefill):
                w, _ = await driver.closed_loop(conns, count=count, kinds=[kind])
                prefill[what] = w.done
                prefill["unexpected"] = prefill.get("unexpected", 0) + sum(w.unexpected.values())
                prefill["errors"] = prefill.get("errors", 0) + sum(w.errors.values())
            prefill["seconds"] = time.monotonic() - started
            print(f"prefill: {prefill}", flush=True)
        if not args.rate:
            warm, _ = await driver.closed_loop(conns, seconds=min(3.0, args.capacity_seconds))
            w, capacity["mix"] = await driver.closed_loop(conns, seconds=args.capacity_seconds)
            capacity["mix_unexpected"] = sum(w.unexpected.values()) + sum(warm.unexpected.values())
            capacity["mix_errors"] = sum(w.errors.values()) + sum(warm.errors.values())
            print(
                f"capacity: {capacity['mix']:,.0f} req/s (this mix, closed loop, "
                f"{args.capacity_connections} connections, {args.capacity_seconds:g} s; "
                f"{capacity['mix_unexpected']} unexpected, {capacity['mix_errors']} errors)"
            )
            rate = capacity[args.capacity_of] * args.fraction
        print(
            f"soak: {args.minutes:g} min through Envoy -> authz over {args.transport}, "
            f"open loop at {rate:,.0f} req/s"
            + (f" ({args.fraction:.0%} of the {args.capacity_of} capacity)" if capacity else "")
        )
        # a request waiting longer than --timeout is timed out anyway
        driver.max_backlog = max(100, int(rate * args.timeout))
        fill.update(fill_times(mix, rate))
        print("the trickle of new identities and paths cycles each bounded table in about: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in fill.items()), flush=True)  # fmt: skip
        print(HEADER)
        print(RULE, flush=True)
        baseline()
        refresher = asyncio.ensure_future(refresh())
        try:
            await driver.run(rate, seconds, args.interval, on_interval)
        finally:
            refresher.cancel()
            driver.close_all()
        await asyncio.gather(*pending)
        return driver

    driver = uvloop.run(drive())
    for p in (authz, envoy):
        if not p.alive():
            print(f"soak: {p.name} exited during the run; see {p.log}")
            return False

    elapsed = max(0.0, driver.last_hog - driver.first_hog)
    hogs = len(tokens.hogs)
    quota = {"admitted": float(driver.hog_admitted),
             "quota": hogs * (HOG_BURST + HOG_PER_SECOND * elapsed + 1)}  # fmt: skip
    checks = verdict(rows, args.interval, quota, capacity, prefill)
    passed = all(c["ok"] is not False for c in checks)
    statuses: dict[str, Counter[int]] = {}
    for w in windows:
        for (name, status), c in w.statuses.items():
            statuses.setdefault(name, Counter())[status] += c
    meta: dict[str, Any] = {
        **at_start,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python bench/soak.py", *(sys.argv[1:] if argv is None else argv)]),
        "minutes": args.minutes,
        "interval_s": args.interval,
        "transport": args.transport,
        "workers": args.workers,
        "capacity": capacity,
        "capacity_of": args.capacity_of if capacity else None,
        "capacity_method": {
            "wrk": f"wrk, closed loop, {args.capacity_connections} connections, "
            f"{args.capacity_seconds:g} s, GET {fixtures.PATH} with a cached token",
            "mix": f"this load generator, closed loop, {args.capacity_connections} "
            f"connections, {args.capacity_seconds:g} s, the same mix",
        },
        "rate_rps": rate,
        "fraction": args.fraction if capacity else None,
        "requests_sent": driver.sent,
        "fresh_identities": tokens.fresh,
        "bounds": BOUNDS,
        "fill_seconds": fill,
        "prefill": prefill,
        "tables": {
            "token_cache": CACHE_SIZE,
            "rate_limit_max_keys": MAX_KEYS,
            "inventory_undeclared_shapes": INVENTORY,
            "identity_header_cache": IDENTITY_HEADER_CACHE_SIZE,
            "undeclared_counters": MAX_UNDECLARED_SHAPES,
        },
        "loadavg_at_end": os.getloadavg(),
    }
    mix_rows = [
        {"kind": k.name, "group": k.group, "weight": k.weight / total_weight,
         "expect": sorted(k.expect),
         "observed": {str(s): c for s, c in sorted(statuses.get(k.name, Counter()).items())}}
        for k in mix
    ]  # fmt: skip
    data = {"meta": meta, "rows": [r.__dict__ for r in rows], "checks": checks,
            "quota": quota, "mix": mix_rows, "passed": passed}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(data, indent=2) + "\n")
    text = report(data)
    (args.out / f"{args.name}.md").write_text(text)
    print()
    print("\n".join(_verdict_lines(checks)))
    print(f"written to {args.out}/{args.name}.md and .json")
    return passed


def _verdict_lines(checks: list[dict[str, Any]]) -> list[str]:
    mark = {True: "ok", False: "FAILED", None: "not judged (fewer than 3 intervals of 30 s+)"}
    out = ["| check | bound | observed | verdict |", "| --- | --- | --- | --- |"]
    for c in checks:
        out.append(f"| {c['check']} | {c['bound']} | {c['observed']} | {mark[c['ok']]} |")
    return out


def report(data: dict[str, Any]) -> str:
    meta = data["meta"]
    rows = [Row(**r) for r in data["rows"]]
    cap = " (given with --rate)"
    c = meta["capacity"]
    if c:
        how = meta["capacity_method"]
        basis = "the mix's" if meta["capacity_of"] == "mix" else "the valid-token request's"
        cap = (
            f" ({meta['fraction']:.0%} of {basis} capacity, measured first: the mix "
            f"{c['mix']:,.0f} req/s by {how['mix']}, with {c['mix_unexpected']:.0f} "
            f"unexpected statuses and {c['mix_errors']:.0f} errors; the valid-token request "
            f"alone {c['wrk']:,.0f} req/s by {how['wrk']})"
        )
    after = max(1, sum(r.done for r in rows[2:]))
    t = meta["tables"]
    p = meta["prefill"]
    pre = (
        f"{p.get('identities', 0):,.0f} new identities and {p.get('undeclared_shapes', 0):,.0f} "
        f"distinct undeclared paths, closed loop, {p.get('seconds', 0):.0f} s"
        if p
        else "no prefill: --prefill 0"
    )
    out = [
        "# authz soak",
        "",
        f"Measured {meta['date']} with `{meta['command']}`: {meta['minutes']:g} min, "
        f"open loop at {meta['rate_rps']:,.0f} req/s{cap}, through Envoy "
        f"(1 worker thread, direct responses) to `authz serve` over {meta['transport']} "
        f"({meta['workers']} worker). {meta['requests_sent']:,} requests, "
        f"{meta['fresh_identities']:,} of them with a token of a new identity.",
        "",
        f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory']}; Linux "
        f"{meta['kernel']}, Python {meta['python']}, Envoy {meta['envoy']}. Shared with "
        f"other work: load average {meta['loadavg_at_start'][0]:.2f} at start, "
        f"{meta['loadavg_at_end'][0]:.2f} at end; the load generator (one Python process) "
        "runs on the same two cores.",
        "",
        f"## Per {meta['interval_s']:g} s",
        "",
        HEADER,
        RULE,
        *(row_line(r) for r in rows),
        "",
        "Latency runs from when each request was due (open loop), over the whole mix; "
        "engine p99 is the service's own time per decision (the decision log's "
        "`latency_ms`, from the engine's start to its decision: no transport, no queue). "
        "CPU pressure: the share of the interval in which some task on the machine waited "
        "for a CPU (/proc/pressure/cpu); machine idle: idle CPU time of the whole machine "
        "(/proc/stat). Both show how much other work competed for the two cores. "
        "RSS is sampled at the end of each interval; CPU is per request sent in it. "
        "Log lines: decision-log lines written in the interval; backlog: decisions "
        "taken (requests that reach authz) but not yet in the log at the sample.",
        "",
        "## Verdict",
        "",
        *_verdict_lines(data["checks"]),
        "",
        f"Overall: **{'passed' if data['passed'] else 'FAILED'}**.",
        "",
        "Why these bounds: every bounded table (verified-token cache "
        f"{t['token_cache']:,}, rate-limit buckets {t['rate_limit_max_keys']:,} per table, "
        f"identity-header cache {t['identity_header_cache']:,}, inventory "
        f"{t['inventory_undeclared_shapes']:,} undeclared shapes, undeclared counters "
        f"{t['undeclared_counters']:,}) is filled before anything is measured ({pre}), and "
        "the mix's trickle of new identities and paths keeps cycling them (at this rate: "
        + ", ".join(f"{k} every ~{v:.0f} s" for k, v in meta["fill_seconds"].items())
        + "), so the second interval is the steady state; the policy's tables are small "
        "on purpose (bench/memory.py measures them at a million entries). "
        f"+{BOUNDS['rss_mib']:g} MiB (or +{(BOUNDS['rss_ratio'] - 1):.0%}) leaves room for "
        "allocator arenas and fragmentation, and still catches a leak of "
        f"{BOUNDS['rss_mib'] * 2**20 / after:.0f} bytes per request or more ({after:,} "
        "requests after the baseline). "
        f"p99 within {BOUNDS['p99_ratio']:g}x (the median of the last three intervals' p99 "
        "against the median of intervals 2-4, so that one noisy interval cannot decide "
        "while a real drift, which moves all three, does): a table or queue that grows, "
        "or GC work that grows with the heap, shows as rising tail latency; the slack is "
        "for the shared machine's noise (see the load column). Fds within "
        f"+{BOUNDS['fds']}: connections and files are not kept. Unexpected statuses and "
        "errors: none, ever.",
        "",
        "## Mix",
        "",
        "| kind | group | share | expected | observed |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for m in data["mix"]:
        observed = ", ".join(f"{s}: {c:,}" for s, c in m["observed"].items())
        expect = "/".join(str(s) for s in m["expect"])
        out.append(f"| {m['kind']} | {m['group']} | {m['weight']:.1%} | {expect} | {observed} |")
    q = data["quota"]
    out += [
        "",
        f"Rate-limited identities (4 subjects, {HOG_BURST} burst, 60/min each): "
        f"{q['admitted']:.0f} admitted, quota {q['quota']:.0f}.",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
