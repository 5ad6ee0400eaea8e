"""Fault injection: the rate-limit store's redis-server killed or frozen under load.

Complements tests/integration/test_ratelimit_redis.py::test_redis_stopped_mid_run_then_back
(Redis stopped cleanly with SIGTERM, sequential calls) and its store-level
test_outage_fails_fast_then_recovers_by_itself. Here Redis dies with SIGKILL while
calls are in flight and comes back on the same port with an empty dataset, or
freezes (SIGSTOP: connections stay open, nothing answers) and thaws.

The stated recovery bound: a rule is enforcing again within 5 s of Redis being
back (retry_interval 0.5 s, timeout 250 ms; the slack is for a busy box).
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Checker, Load, Outcome, check_request, serve, wait_for
from tests.redis_server import RedisServer
from tests.support import ServiceProcess

RECOVERY = 5.0  # seconds from Redis being back to the rule enforcing again

POLICY = """\
rate_limits:
  stores:
    shared: {{type: redis, url: "{url}", timeout: 250ms, retry_interval: 500ms}}
routes:
  - {{name: closed, path: /closed, methods: [GET], public: true,
      rate_limits: [{{name: closed, rate: 100000/d, key: [route], store: shared, on_store_error: deny}}]}}
  - {{name: quota, path: /quota, methods: [GET], public: true,
      rate_limits: [{{name: quota, rate: 5/d, key: [route], store: shared, on_store_error: deny}}]}}
  - {{name: local, path: /local, methods: [GET], public: true,
      rate_limits: [{{name: local, rate: 100000/d, key: [route], store: shared, on_store_error: local}}]}}
"""

#: what each route may answer while Redis is up or down (never an RPC error, never 500)
ALLOWED_ANSWERS = {
    "closed": {(200, "allowed"), (503, "rate_limit_unavailable")},
    "local": {(200, "allowed")},  # falls back to an in-process bucket; never 503
}


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)  # a frozen server cannot stop
    server.stop()


@pytest.fixture()
def service(
    redis: RedisServer, tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> ServiceProcess:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(url=redis.url))
    return serve(start_service, path)  # type: ignore[no-any-return]


def exhaust_quota(c: Checker) -> None:
    assert [c.check("/quota")[:2] for _ in range(6)] == [(200, "allowed")] * 5 + [
        (429, "rate_limited")
    ]


def unexpected(outcomes: list[Outcome]) -> collections.Counter[tuple[str, object, str]]:
    return collections.Counter(
        (o.kind, o.status if o.error is None else o.error, o.reason)
        for o in outcomes
        if o.error is not None or (o.status, o.reason) not in ALLOWED_ANSWERS[o.kind]
    )


def test_redis_sigkilled_under_load_then_back_empty(
    redis: RedisServer, service: ServiceProcess
) -> None:
    """Fault: redis-server killed with SIGKILL while 8 callers keep sending Checks
    (connections reset mid-call), then started again on the same port with an
    empty dataset.
    Expected: every call is answered, none with an RPC error or a 500: the
    fail-closed rule answers 503 rate_limit_unavailable while Redis is down, the
    local-fallback rule keeps allowing from an in-process bucket; the outage is
    logged once, not per call. Within 5 s of Redis being back the fail-closed rule
    allows again by itself, and it enforces: the 5/d quota that was used up before
    the crash starts over (the dataset is empty), 5 allowed then 429."""
    with Checker(service.address) as c:
        exhaust_quota(c)
        load = Load(
            service.address,
            [("closed", check_request("/closed")), ("local", check_request("/local"))],
            concurrency=8,
            channels=2,
            pause=0.005,
        ).start()
        try:
            wait_for(lambda: load.answered() >= 100, 60, "100 answers before the crash")
            assert redis.proc is not None
            killed_at = time.monotonic()
            redis.proc.kill()
            redis.proc.wait(timeout=10)
            wait_for(
                lambda: any(o.status == 503 for o in load.outcomes), 10, "the rule fails closed"
            )
            time.sleep(1.0)  # an outage under load, well past FAILURES_TO_OPEN
            assert c.check("/closed")[:2] == (503, "rate_limit_unavailable")
            assert c.check("/local")[:2] == (200, "allowed")
            assert c.check("/quota")[:2] == (503, "rate_limit_unavailable")
            redis.start()  # the same port; no persistence: empty
            back_at = time.monotonic()
            wait_for(lambda: c.check("/closed")[0] == 200, RECOVERY, "enforcing again")
            recovered_at = time.monotonic()
            exhaust_quota(c)  # a fresh bucket, and it is enforced
            time.sleep(0.5)
        finally:
            outcomes = load.stop()
    assert not unexpected(outcomes), unexpected(outcomes)
    assert not [o for o in outcomes if o.status == 503 and o.done < killed_at]
    late = [o for o in outcomes if o.status == 503 and o.sent > recovered_at + 0.5]
    assert not late, f"{len(late)} calls still failed closed under load after recovery"
    assert sum(o.status == 503 for o in outcomes) > 0
    log = service.log()
    assert log.count("unreachable (") == 1, "the outage is logged once"
    assert "reachable again" in log
    assert "Traceback" not in log
    print(f"recovered {recovered_at - back_at:.2f}s after redis came back")


def test_redis_frozen_then_thawed(redis: RedisServer, service: ServiceProcess) -> None:
    """Fault: redis-server frozen with SIGSTOP (its connections stay open and
    nothing answers: the worst outage for a client without deadlines), then
    resumed with SIGCONT.
    Expected: no call hangs: each is answered within the store's 250 ms timeout
    (plus slack; a hung call would wait for the caller's 10 s deadline) and after
    3 failures the store fails fast; the fail-closed rule answers 503
    rate_limit_unavailable and the local rule allows. After SIGCONT the fail-closed
    rule allows again within 5 s by itself, and the data survived the freeze: the
    quota used up before it is still used up (429)."""
    assert redis.proc is not None
    with Checker(service.address) as c:
        exhaust_quota(c)
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            latencies = []
            for _ in range(10):
                start = time.monotonic()
                assert c.check("/closed")[:2] == (503, "rate_limit_unavailable")
                latencies.append(time.monotonic() - start)
                assert c.check("/local")[:2] == (200, "allowed")
            assert max(latencies) < 0.25 + 1.5, latencies
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: c.check("/closed")[0] == 200, RECOVERY, "enforcing again")
        assert c.check("/quota")[:2] == (429, "rate_limited")
    log = service.log()
    assert log.count("unreachable (") == 1
    assert "reachable again" in log
    assert "Traceback" not in log
