"""Runtimes end to end: building starts nothing, stop closes everything, a failed
reload leaves nothing running. Against a real redis-server and a JWKS file."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from authz import devissuer, pipeline
from authz.audit.sink import JsonLinesSink
from authz.engine import CompiledPolicy
from authz.model import Request
from authz.policy.config import RouteConfig
from authz.policy.loader import load_policy
from authz.ratelimit.runtime import RateLimitRuntime
from authz.serve_options import ServeOptions
from authz.server import Service
from authz.stages import Load, Shared
from tests.redis_server import RedisServer

KEY = devissuer.generate_key("ES256")
ISSUER = "https://issuer.example"

POLICY = """\
version: 1
# {version}
realm: shop
providers:
  corp: {{type: jwt, issuer: "{issuer}", audiences: [shop], algorithms: [ES256], jwks_file: {jwks}}}
rate_limits:
  stores:
    shared: {{type: redis, url: "{redis}", timeout: 2s}}
  rules:
    - {{name: per-address, rate: 1000/s, key: [client_address]}}
routes:
  - name: open
    path: /open
    methods: [GET]
    public: true
    rate_limits:
      - {{name: exact, rate: 1000/s, store: shared}}
      - {{name: batched, rate: 1000/s, burst: 100, batch: 10, store: shared}}
  - {{name: orders, path: /orders, methods: [GET], providers: [corp]}}
"""


def write_policy(tmp_path: Path, redis_url: str, version: str = "v1") -> Path:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(devissuer.jwks([KEY])))
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(version=version, issuer=ISSUER, jwks=jwks, redis=redis_url))
    return path


def clients(redis: RedisServer) -> int:
    """Connections Redis holds, not counting the one asking."""
    return redis.command("CLIENT", "LIST").count(b"id=") - 1


def threads() -> list[str]:
    """The names of the threads running, but the event loop's default executor: it grows
    on demand (a reload reads the policy through ``asyncio.to_thread``) and a build
    never starts it, so its pool size is no evidence either way."""
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_building_a_policy_starts_nothing(tmp_path: Path, redis_server: RedisServer) -> None:
    config = load_policy(write_policy(tmp_path, redis_server.url))
    shared = Shared()
    before_tasks, before_threads = tasks(), threads()
    before_clients = clients(redis_server)
    policy = CompiledPolicy(config, shared=shared)
    await asyncio.sleep(0.05)  # anything scheduled by the build would be running now
    assert tasks() == before_tasks
    assert threads() == before_threads
    assert clients(redis_server) == before_clients
    # ... but it registered what it needs, to be started by the owner
    runtime = RateLimitRuntime.of(shared)
    (redis,) = runtime.redis.values()
    (batched,) = runtime.batched.values()
    pending = shared.runtimes.pending
    assert runtime in pending and redis in pending and batched in pending
    assert pending.index(redis) < pending.index(batched)  # closed after the batched store
    assert policy.runtimes.pending  # the identity providers
    await policy.close()


async def test_stop_closes_every_runtime(tmp_path: Path, redis_server: RedisServer) -> None:
    path = write_policy(tmp_path, redis_server.url)
    sink = JsonLinesSink(path=str(tmp_path / "decisions.log"))
    service = Service(
        ServeOptions(
            policy=str(path),
            grpc="127.0.0.1:0",
            reload_interval=0,
            reload_settle=0,
            drain_delay=0,
            drain_timeout=2,
        ),
        sink=sink,
    )
    assert sink._thread is None  # built, not started
    await service.start()
    assert service.engine is not None
    engine = service.engine
    policy = engine.policy
    decision = await engine.check(Request(method="GET", path="/open", source_address="192.0.2.7"))
    assert decision.allowed, decision.reason
    runtime = RateLimitRuntime.of(service.shared)
    (redis,) = runtime.redis.values()
    (batched,) = runtime.batched.values()
    jwks = policy.providers["corp"].jwks  # type: ignore[attr-defined]
    for _ in range(100):  # the providers start in the background
        if jwks._background is not None:
            break
        await asyncio.sleep(0.02)
    refresher, flusher, stats = jwks._background, batched._flusher, runtime._stats_task
    writer = sink._thread
    assert refresher is not None and not refresher.done()
    assert flusher is not None and not flusher.done()
    assert stats is not None and not stats.done()
    assert writer is not None and writer.is_alive()
    assert clients(redis_server) >= 1
    started = service.shared.runtimes.started
    assert started[0] is sink and redis in started and batched in started

    await service.stop()

    assert refresher.done() and flusher.done() and stats.done()
    assert not writer.is_alive()
    assert clients(redis_server) == 0
    assert service.shared.runtimes.started == ()
    assert (tmp_path / "decisions.log").read_text().count("\n") == 1


class Broken:
    """A stage that cannot be built (after the rate-limit stages built theirs)."""

    name = "broken"
    phase = "observe"

    def build(self, load: Load, route: RouteConfig | None) -> None:
        raise ValueError("this stage cannot be built")


async def test_a_failed_build_leaves_nothing_running(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = RedisServer(tmp_path / "other").start()  # the store only the bad policy names
    try:
        path = write_policy(tmp_path, redis_server.url)
        service = Service(
            ServeOptions(
                policy=str(path),
                grpc="127.0.0.1:0",
                decision_log="off",
                reload_interval=0,
                reload_settle=0,
                drain_delay=0,
                drain_timeout=2,
            )
        )
        await service.start()
        for _ in range(250):  # its providers started (in the background)
            if service.unhealthy() is None:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        started = service.shared.runtimes.started
        first = service.engine.policy.version if service.engine else ""
        before_tasks, before_threads = tasks(), threads()
        write_policy(tmp_path, other.url, version="v2")
        monkeypatch.setattr(pipeline, "STAGES", (*pipeline.STAGES, Broken()))
        with pytest.raises(ValueError, match="cannot be built"):
            await service.reload()
        await asyncio.sleep(0.05)
        assert service.shared.runtimes.pending == ()  # the new store: abandoned
        assert service.shared.runtimes.started == started
        assert tasks() == before_tasks and threads() == before_threads
        assert clients(other) == 0
        assert service.engine is not None and service.engine.policy.version == first
        monkeypatch.undo()
        assert await service.reload()  # the same content builds now, and its store starts
        assert service.engine.policy.version != first
        runtime = RateLimitRuntime.of(service.shared)
        assert len(runtime.redis) == 2
        assert all(s in service.shared.runtimes.started for s in runtime.redis.values())
        await service.stop()
    finally:
        other.stop()
