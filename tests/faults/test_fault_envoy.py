"""Fault injection through a real Envoy: what clients see when an authz worker dies.

The local stack (an upstream, ``authz serve --workers 2``, Envoy calling it over
gRPC with ``failure_mode_allow: false`` and ``status_on_error: 403``) serves
HTTP clients on 127.0.0.1 while one worker is killed with SIGKILL.
"""

from __future__ import annotations

import collections
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from authz.demo.stack import LocalStack
from authz.demo.stack import http as send
from tests.faults.harness import child_pids, established_on, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY = "fault-envoy-key-0123456789abcdef"
POLICY = """\
mode: enforce
realm: shop
providers:
  keys:
    type: api_key
    keys:
      - {{id: shop-app, sha256: {digest}, owner: shop, scopes: [shop], expires: "2999-01-01"}}
routes:
  - {{name: search, path: /search, methods: [GET], providers: [keys]}}
"""


class Clients:
    """``threads`` HTTP clients through Envoy, alternating a keyed and an anonymous call."""

    def __init__(self, base_url: str, threads: int = 6) -> None:
        self.base_url = base_url
        self.results: list[tuple[float, str, int]] = []  # (done, kind, status)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def start(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[tuple[float, str, int]]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=20)
        return self.results

    def _run(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            keyed = n % 2 == 0
            n += 1
            headers = {"x-api-key": KEY} if keyed else {}
            try:
                status, _, _ = send("GET", self.base_url + "/search", headers)
            except OSError:
                status = -1  # Envoy itself did not answer
            self.results.append((time.monotonic(), "keyed" if keyed else "anonymous", status))


def test_worker_killed_behind_envoy_clients_see_only_correct_answers_or_403(
    tmp_path: Path,
) -> None:
    """Fault: one of two authz workers killed with SIGKILL while 6 HTTP clients call
    through Envoy.
    Expected: a client never gets an allow it should not (an anonymous call is
    never 200) and never a connection error from Envoy; a call whose authz check
    was in flight on the killed worker gets Envoy's fail-closed 403
    (status_on_error), at most one per client in flight (6); all other calls get
    their normal answers (200 keyed, 401 anonymous) and, once the supervisor has
    started a new worker, there are no more 403s."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(digest=hashlib.sha256(KEY.encode()).hexdigest()))
    stack = LocalStack(
        policy=policy, state_dir=tmp_path / "state", extra_serve_args=("--workers", "2")
    )
    stack.start(timeout=90)
    try:
        supervisor = stack.procs[0]
        wait_for(lambda: len(child_pids(supervisor.pid)) == 2, 60, "two workers")
        workers = child_pids(supervisor.pid)
        clients = Clients(stack.base_url).start()
        try:
            wait_for(lambda: len(clients.results) >= 100, 60, "100 answers before the kill")
            # the worker holding Envoy's connection (Envoy runs one, --concurrency 1)
            held = established_on(workers, stack.authz_port)
            victim = min(held or workers)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(child_pids(supervisor.pid) - workers) == 1, 30, "a new worker")
            wait_for(stack.authz_ready, 60, "health SERVING")
            restarted = time.monotonic()
            time.sleep(3.0)  # load over the new worker too
        finally:
            results = clients.stop()
    finally:
        stack.stop()
    wrong = collections.Counter(
        (kind, status)
        for _, kind, status in results
        if (kind, status) not in {("keyed", 200), ("anonymous", 401), (kind, 403)}
    )
    assert not wrong, f"unexpected answers: {dict(wrong)}"
    fail_closed = [done for done, _, status in results if status == 403]
    assert len(fail_closed) <= 6, f"{len(fail_closed)} calls got Envoy's fail-closed 403"
    assert all(done >= killed_at for done in fail_closed)
    assert not [d for d in fail_closed if d > restarted], "403s after the restart"
    print(
        f"{len(results)} calls; victim held Envoy's connection: {bool(held)}; "
        f"{len(fail_closed)} fail-closed 403s; "
        f"new worker healthy {restarted - killed_at:.1f}s after the kill"
    )
