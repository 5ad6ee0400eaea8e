"""JwksCache: sources, refresh rate limits, rotation, outages, discovery."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from authz import devissuer
from authz.devissuer import DevIssuerServer, DevKey
from authz.errors import DependencyError, InvalidToken
from authz.identity import jwks_fetch
from authz.identity.jwk import parse_jwks
from authz.identity.jwks import JwksCache
from authz.identity.jwks_fetch import fetch_url
from authz.policy.config import JwtProviderConfig


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def config(**overrides: Any) -> JwtProviderConfig:
    values: dict[str, Any] = {
        "name": "dev",
        "issuer": "https://issuer.test",
        "audiences": ("api",),
        "jwks_ttl": 300.0,
        "jwks_refresh_interval": 30.0,
        "jwks_stale_ttl": 3600.0,
        "jwks_timeout": 2.0,
    }
    values.update(overrides)
    return JwtProviderConfig(**values)


@pytest.fixture(scope="module")
def es_keys() -> list[DevKey]:
    return [devissuer.generate_key("ES256") for _ in range(3)]


@pytest.fixture(scope="module")
def rsa_key() -> DevKey:
    return devissuer.generate_key("RS256")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(es_keys: list[DevKey]) -> Iterator[DevIssuerServer]:
    with DevIssuerServer([es_keys[0]]) as s:
        yield s


@pytest.fixture
async def caches() -> AsyncIterator[list[JwksCache]]:
    made: list[JwksCache] = []
    yield made
    for c in made:
        await c.aclose()


def write_jwks(path: Path, keys: list[DevKey], mtime_ns: int | None = None) -> None:
    path.write_text(json.dumps(devissuer.jwks(keys)))
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- construction and parsing --------------------------------------------------------


def test_exactly_one_source_is_required() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        JwksCache(config())
    with pytest.raises(ValueError, match="exactly one"):
        JwksCache(config(jwks_uri="http://x/jwks.json", discovery=True))


def test_parse_skips_unusable_keys_and_logs(
    es_keys: list[DevKey], caplog: pytest.LogCaptureFixture
) -> None:
    good = es_keys[0].public_jwk()
    enc = dict(es_keys[1].public_jwk(), use="enc")
    broken = dict(es_keys[2].public_jwk(), x="not-a-point")
    duplicate = dict(es_keys[1].public_jwk(), kid=good["kid"])
    wrong_alg = dict(es_keys[1].public_jwk(), kid="w", alg="RS256")
    verify_not_allowed = dict(es_keys[1].public_jwk(), kid="o", key_ops=["encrypt"])
    doc = {"keys": [good, enc, broken, duplicate, wrong_alg, verify_not_allowed, "junk", {}]}
    with caplog.at_level(logging.WARNING, logger="authz.jwks"):
        keys = parse_jwks(json.dumps(doc).encode())
    assert [k.kid for k in keys] == [good["kid"]]
    assert keys[0].family == "EC" and keys[0].alg == "ES256"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "unparsable" in messages and "duplicate kid" in messages


@pytest.mark.parametrize(
    "document",
    [b"not json", b"[]", b'{"keys": {}}', b'{"keys": []}', b'{"keys": [{"kty": "RSA"}]}'],
)
def test_parse_rejects_unusable_documents(document: bytes) -> None:
    with pytest.raises(ValueError):
        parse_jwks(document)


def test_private_key_in_jwks_is_reduced_to_public(rsa_key: DevKey) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    assert isinstance(rsa_key.private_key, rsa.RSAPrivateKey)
    private_jwk = RSAAlgorithm.to_jwk(rsa_key.private_key, as_dict=True)
    del private_jwk["key_ops"]  # ["sign"]: would be skipped as not for verification
    [key] = parse_jwks({"keys": [dict(private_jwk, kid="k")]})
    assert not hasattr(key.key, "private_numbers")


# -- file source -----------------------------------------------------------------------


async def test_file_source_loads_and_serves_known_kid_without_io(
    tmp_path: Path, es_keys: list[DevKey], clock: FakeClock, caches: list[JwksCache]
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, [es_keys[0]])
    cache = JwksCache(config(jwks_file=str(path)), clock=clock)
    caches.append(cache)
    assert not cache.ready()
    await cache.start()
    assert cache.ready()
    for _ in range(5):
        key = await cache.key_for(es_keys[0].kid)
        assert key.kid == es_keys[0].kid
    assert cache.fetches == 1


async def test_file_reread_only_when_mtime_changes_and_at_most_once_per_interval(
    tmp_path: Path, es_keys: list[DevKey], clock: FakeClock, caches: list[JwksCache]
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, [es_keys[0]], mtime_ns=1_000_000_000)
    cache = JwksCache(config(jwks_file=str(path)), clock=clock)
    caches.append(cache)
    await cache.start()

    # Unchanged file: a refresh is a stat, not a read.
    clock.advance(31)
    assert await cache.refresh()
    assert cache.fetches == 1

    write_jwks(path, [es_keys[0], es_keys[1]], mtime_ns=2_000_000_000)
    clock.advance(1)
    # Inside the interval: the new kid is not looked for.
    with pytest.raises(InvalidToken) as err:
        await cache.key_for(es_keys[1].kid)
    assert err.value.reason == "token_unknown_kid"
    assert cache.fetches == 1 and cache.suppressed_refreshes == 1
    clock.advance(30)
    assert (await cache.key_for(es_keys[1].kid)).kid == es_keys[1].kid
    assert cache.fetches == 2 and cache.unknown_kid_refreshes == 1


async def test_bad_file_content_keeps_previous_keys(
    tmp_path: Path, es_keys: list[DevKey], clock: FakeClock, caches: list[JwksCache]
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, [es_keys[0]], mtime_ns=1_000_000_000)
    cache = JwksCache(config(jwks_file=str(path)), clock=clock)
    caches.append(cache)
    await cache.start()
    path.write_text("{ this is not json")
    os.utime(path, ns=(3_000_000_000, 3_000_000_000))
    clock.advance(31)
    assert not await cache.refresh()
    assert cache.failures == 1
    assert (await cache.key_for(es_keys[0].kid)).kid == es_keys[0].kid


async def test_missing_file_is_not_ready_and_unavailable(
    tmp_path: Path, clock: FakeClock, caches: list[JwksCache]
) -> None:
    cache = JwksCache(config(jwks_file=str(tmp_path / "absent.json")), clock=clock)
    caches.append(cache)
    await cache.start()  # logged, not raised
    assert not cache.ready() and cache.failures == 1
    with pytest.raises(DependencyError) as err:
        await cache.key_for("anything")
    assert err.value.reason == "jwks_unavailable"


# -- key selection without kid -------------------------------------------------------------


async def test_token_without_kid_needs_exactly_one_compatible_key(
    es_keys: list[DevKey], rsa_key: DevKey, clock: FakeClock, caches: list[JwksCache]
) -> None:
    docs = {"one": [es_keys[0]], "two_ec": [es_keys[0], es_keys[1]], "mixed": [es_keys[0], rsa_key]}
    results: dict[str, Any] = {}
    for name, keys in docs.items():
        doc = json.dumps(devissuer.jwks(keys)).encode()

        async def fetcher(url: str, timeout: float, doc: bytes = doc) -> bytes:
            return doc

        cache = JwksCache(config(jwks_uri="http://issuer.test/jwks"), clock=clock, fetcher=fetcher)
        caches.append(cache)
        await cache.start()
        try:
            results[name] = (await cache.key_for(None, "ES256")).kid
        except InvalidToken as exc:
            results[name] = exc.reason
    assert results == {
        "one": es_keys[0].kid,
        "two_ec": "token_unknown_kid",
        "mixed": es_keys[0].kid,
    }


# -- network sources (DevIssuerServer on loopback) -------------------------------------------


async def test_random_kid_flood_causes_exactly_one_fetch_per_interval(
    server: DevIssuerServer, clock: FakeClock, caches: list[JwksCache]
) -> None:
    cache = JwksCache(config(jwks_uri=server.jwks_uri), clock=clock)
    caches.append(cache)
    await cache.start()
    assert server.hits["/jwks.json"] == 1

    async def attempt() -> str:
        try:
            await cache.key_for(secrets.token_hex(8))
        except InvalidToken as exc:
            return exc.reason
        return "found"

    # Keys fetched less than an interval ago are not fetched again for a kid...
    assert await attempt() == "token_unknown_kid"
    assert server.hits["/jwks.json"] == 1
    clock.advance(30)
    # ...after that, a concurrent burst shares one refresh...
    results = await asyncio.gather(*(attempt() for _ in range(50)))
    assert set(results) == {"token_unknown_kid"}
    assert server.hits["/jwks.json"] == 2
    assert cache.unknown_kid_refreshes == 1
    # ...and later callers inside the interval cause none at all.
    for _ in range(100):
        assert await attempt() == "token_unknown_kid"
    clock.advance(29)
    assert await attempt() == "token_unknown_kid"
    assert server.hits["/jwks.json"] == 2
    assert cache.suppressed_refreshes == 1 + 49 + 101
    clock.advance(1)
    assert await attempt() == "token_unknown_kid"
    assert server.hits["/jwks.json"] == 3
    assert cache.fetches == 3 and cache.unknown_kid_refreshes == 2


async def test_rotation_new_kid_is_picked_up_after_one_refresh(
    server: DevIssuerServer, es_keys: list[DevKey], clock: FakeClock, caches: list[JwksCache]
) -> None:
    cache = JwksCache(config(jwks_uri=server.jwks_uri), clock=clock)
    caches.append(cache)
    await cache.start()
    server.add_key(es_keys[1])
    clock.advance(30)
    assert (await cache.key_for(es_keys[1].kid)).kid == es_keys[1].kid
    assert server.hits["/jwks.json"] == 2
    assert (await cache.key_for(es_keys[0].kid)).kid == es_keys[0].kid
    assert server.hits["/jwks.json"] == 2

    # The old key is retired at the issuer and disappears at the next TTL refresh.
    server.remove_key(es_keys[0].kid)
    clock.advance(300)
    await cache.key_for(es_keys[1].kid)  # starts the refresh in the background
    await cache.refresh()  # joins it
    assert server.hits["/jwks.json"] == 3
    with pytest.raises(InvalidToken):
        await cache.key_for(es_keys[0].kid)


async def test_outage_serves_stale_keys_until_stale_ttl_then_fails_closed(
    server: DevIssuerServer,
    es_keys: list[DevKey],
    clock: FakeClock,
    caches: list[JwksCache],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = JwksCache(config(jwks_uri=server.jwks_uri, jwks_stale_ttl=1000.0), clock=clock)
    caches.append(cache)
    await cache.start()
    kid = es_keys[0].kid
    server.unavailable = True

    clock.advance(301)  # past the TTL: refresh in the background, keep serving
    with caplog.at_level(logging.WARNING, logger="authz.jwks"):
        assert (await cache.key_for(kid)).kid == kid
        assert not await cache.refresh()
    assert cache.failures == 1
    assert any("503" in r.getMessage() for r in caplog.records)

    clock.advance(1000 - 301 - 1)  # 999 s after the last good fetch
    assert (await cache.key_for(kid)).kid == kid
    assert cache.ready()
    clock.advance(1)  # 1000 s: stale
    with pytest.raises(DependencyError) as err:
        await cache.key_for(kid)
    assert err.value.reason == "jwks_unavailable"
    assert not cache.ready()
    # Within the interval the failing issuer is not asked again.
    hits = server.hits["/jwks.json"]
    with pytest.raises(DependencyError):
        await cache.key_for(kid)
    assert server.hits["/jwks.json"] == hits

    server.unavailable = False
    clock.advance(30)
    assert (await cache.key_for(kid)).kid == kid
    assert cache.ready()


async def test_unreachable_issuer_with_no_keys_ever(
    clock: FakeClock, caches: list[JwksCache]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    cache = JwksCache(config(jwks_uri=url, jwks_timeout=1.0), clock=clock)
    caches.append(cache)
    await cache.start()
    assert not cache.ready()
    with pytest.raises(DependencyError) as err:
        await cache.key_for("k")
    assert err.value.reason == "jwks_unavailable"


async def test_discovery_finds_jwks_uri(
    server: DevIssuerServer, es_keys: list[DevKey], clock: FakeClock, caches: list[JwksCache]
) -> None:
    cache = JwksCache(config(issuer=server.url, discovery=True), clock=clock)
    caches.append(cache)
    await cache.start()
    assert cache.ready()
    assert (await cache.key_for(es_keys[0].kid)).kid == es_keys[0].kid
    assert server.hits == {"/.well-known/openid-configuration": 1, "/jwks.json": 1}


async def test_discovery_with_mismatched_issuer_is_refused(
    server: DevIssuerServer, clock: FakeClock, caches: list[JwksCache],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    server.advertised_issuer = "http://evil.test"
    cache = JwksCache(config(issuer=server.url, discovery=True), clock=clock)
    caches.append(cache)
    with caplog.at_level(logging.WARNING, logger="authz.jwks"):
        await cache.start()
    assert not cache.ready()
    assert "/jwks.json" not in server.hits
    assert any("does not match" in r.getMessage() for r in caplog.records)
    with pytest.raises(DependencyError):
        await cache.key_for("k")


async def test_concurrent_callers_share_one_inflight_refresh(
    es_keys: list[DevKey], clock: FakeClock, caches: list[JwksCache]
) -> None:
    calls = 0
    release = asyncio.Event()
    doc = json.dumps(devissuer.jwks([es_keys[0]])).encode()

    async def slow_fetcher(url: str, timeout: float) -> bytes:
        nonlocal calls
        calls += 1
        if calls > 1:
            await release.wait()
        return doc

    cache = JwksCache(config(jwks_uri="http://issuer.test/j"), clock=clock, fetcher=slow_fetcher)
    caches.append(cache)
    await cache.start()
    clock.advance(30)
    tasks = [asyncio.ensure_future(cache.key_for(f"kid-{i}")) for i in range(10)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, InvalidToken) for r in results)
    assert calls == 2


async def test_background_task_refreshes_after_ttl_and_stops_on_close(
    server: DevIssuerServer, es_keys: list[DevKey], clock: FakeClock
) -> None:
    cache = JwksCache(config(jwks_uri=server.jwks_uri), clock=clock, poll_interval=0.01)
    await cache.start()
    server.add_key(es_keys[2])
    clock.advance(300)
    for _ in range(200):
        if server.hits["/jwks.json"] >= 2 and es_keys[2].kid in {k.kid for k in cache.keys}:
            break
        await asyncio.sleep(0.01)
    assert server.hits["/jwks.json"] == 2
    await cache.aclose()
    clock.advance(1000)
    await asyncio.sleep(0.05)
    assert server.hits["/jwks.json"] == 2


# -- the default fetcher ------------------------------------------------------------------


async def test_default_fetcher_refuses_non_http_urls(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("{}")
    with pytest.raises(OSError, match="non-http"):
        await fetch_url(secret.as_uri(), 1.0)


async def test_default_fetcher_limits_response_size(
    server: DevIssuerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert json.loads(await fetch_url(server.jwks_uri, 2.0))["keys"]
    monkeypatch.setattr(jwks_fetch, "MAX_DOCUMENT_BYTES", 50)
    with pytest.raises(OSError, match="larger than"):
        await fetch_url(server.jwks_uri, 2.0)


async def test_default_fetcher_raises_oserror_on_http_error(server: DevIssuerServer) -> None:
    with pytest.raises(OSError):
        await fetch_url(server.url + "/nothing-here", 2.0)


async def test_without_usable_keys_retries_back_off_up_to_the_interval(
    es_keys: list[DevKey], clock: FakeClock, caches: list[JwksCache]
) -> None:
    attempts: list[float] = []
    down = True
    doc = json.dumps(devissuer.jwks([es_keys[0]])).encode()

    async def fetcher(url: str, timeout: float) -> bytes:
        attempts.append(clock())
        if down:
            raise OSError("connection refused")
        return doc

    cache = JwksCache(config(jwks_uri="http://issuer.test/j"), clock=clock, fetcher=fetcher)
    caches.append(cache)
    await cache.start()
    t0 = clock()
    for _ in range(80):  # 80 s of requests, one per second
        clock.advance(1)
        with pytest.raises(DependencyError):
            await cache.key_for(es_keys[0].kid)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert attempts[0] == t0
    assert gaps[:5] == [1, 2, 4, 8, 16] and set(gaps[5:]) == {30}
    down = False
    clock.advance(30)
    assert (await cache.key_for(es_keys[0].kid)).kid == es_keys[0].kid
    assert cache.ready()


# -- key identity across refreshes (what the verified-token cache relies on) -----------------


async def test_unchanged_keys_keep_their_objects_and_generation(
    server: DevIssuerServer, es_keys: list[DevKey], clock: FakeClock, caches: list[JwksCache]
) -> None:
    cache = JwksCache(config(jwks_uri=server.jwks_uri), clock=clock)
    caches.append(cache)
    await cache.start()
    [key] = cache.keys
    generation = cache.generation
    clock.advance(300)
    assert await cache.refresh()  # the same document again
    assert cache.keys[0] is key and cache.generation == generation and cache.holds(key)
    assert cache.usable_until == clock() + cache.config.jwks_stale_ttl

    server.add_key(es_keys[1])  # rotation adds a key: the old one is still held
    clock.advance(300)
    assert await cache.refresh()
    assert cache.generation == generation + 1 and cache.holds(key)

    server.remove_key(es_keys[0].kid)  # ...then retires the old one
    clock.advance(300)
    assert await cache.refresh()
    assert cache.generation == generation + 2 and not cache.holds(key)


async def test_metrics_count_lookups_and_stamp_the_last_load(
    tmp_path: Path, es_keys: list[DevKey], clock: FakeClock, caches: list[JwksCache]
) -> None:
    from authz.telemetry.metrics import MemoryMetrics

    path = tmp_path / "jwks.json"
    write_jwks(path, [es_keys[0]])
    metrics = MemoryMetrics()
    cache = JwksCache(
        config(jwks_file=str(path), jwks_stale_ttl=600.0), clock=clock, metrics=metrics
    )
    caches.append(cache)
    assert metrics.value("authz_jwks_last_success_timestamp_seconds", "dev") == 0
    await cache.start()
    loaded = clock()
    for _ in range(3):
        await cache.key_for(es_keys[0].kid)
    with pytest.raises(InvalidToken):
        await cache.key_for(es_keys[1].kid)  # not in the set: a miss (and a refresh)
    assert metrics.value("authz_jwks_key_lookups_total", "dev", "hit") == 3
    assert metrics.value("authz_jwks_key_lookups_total", "dev", "miss") == 1
    assert metrics.value("authz_jwks_last_success_timestamp_seconds", "dev") == loaded
    assert metrics.value("authz_jwks_usable_until_timestamp_seconds", "dev") == loaded + 600
