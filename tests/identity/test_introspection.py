"""RFC 7662 introspection provider against a real endpoint (a thread, real HTTP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.errors import AuthzError
from authz.identity.base import WAIT
from authz.identity.introspection import IntrospectionProvider
from authz.model import Request
from authz.policy.config import IntrospectionProviderConfig
from tests.introspection_server import IntrospectionServer


@pytest.fixture
def server() -> Iterator[IntrospectionServer]:
    s = IntrospectionServer().start()
    yield s
    s.stop()


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


async def provider(tmp_path: Path, url: str, clock: Clock, **kw: Any) -> IntrospectionProvider:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    values: dict[str, Any] = dict(
        name="opaque", endpoint=url, client_id="authz", client_secret_file=str(secret),
        timeout=0.5, cache_ttl=60.0,
    )  # fmt: skip
    values.update(kw)
    p = IntrospectionProvider(IntrospectionProviderConfig(**values), clock=clock)
    await p.start()
    return p


def req(token: str) -> Request:
    return Request(method="GET", path="/", headers={"authorization": f"Bearer {token}"})


async def reason(p: IntrospectionProvider, token: str) -> tuple[int, str]:
    with pytest.raises(AuthzError) as err:
        await p.authenticate(req(token))
    return err.value.status, err.value.reason


async def test_active_token_then_cache(tmp_path: Path, server: IntrospectionServer) -> None:
    clock = Clock()
    server.tokens["t1"] = {
        "active": True, "sub": "alice", "scope": "a b", "exp": clock() + 30, "iss": "https://as",
    }  # fmt: skip
    p = await provider(tmp_path, server.url, clock)
    identity = await p.authenticate(req("t1"))
    assert identity is not None and identity.subject == "alice" and identity.scopes == {"a", "b"}
    assert p.authenticate_now(req("t1")) == identity  # cache hit, no call
    assert server.calls == 1
    clock.t += 31  # never past exp
    assert p.authenticate_now(req("t1")) is WAIT
    assert await reason(p, "t1") == (401, "token_expired")
    assert server.calls == 2


async def test_max_ttl_and_inactive(tmp_path: Path, server: IntrospectionServer) -> None:
    clock = Clock()
    server.tokens["t"] = {"active": True, "sub": "bob"}
    p = await provider(tmp_path, server.url, clock, cache_ttl=10.0, negative_ttl=5.0)
    assert await p.authenticate(req("t")) is not None
    clock.t += 11  # past the max TTL: asked again
    assert await p.authenticate(req("t")) is not None
    assert server.calls == 2
    assert await reason(p, "unknown") == (401, "token_inactive")
    assert await reason(p, "unknown") == (401, "token_inactive")
    assert server.calls == 3  # the negative answer is cached (briefly)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"active": True, "sub": 5}, "token_claim_type"),
        ({"active": True, "sub": "a", "exp": "soon"}, "token_claim_type"),
        ({"active": True, "sub": "a", "scope": ["x"]}, "token_claim_type"),
        ({"active": True, "sub": "a", "token_type": "refresh_token"}, "token_not_access_token"),
        ({"active": "true", "sub": "a"}, "introspection_unavailable"),
    ],
)
async def test_answers_are_read_strictly(
    tmp_path: Path, server: IntrospectionServer, answer: dict[str, Any], expected: str
) -> None:
    server.tokens["t"] = answer
    p = await provider(tmp_path, server.url, Clock())
    assert (await reason(p, "t"))[1] == expected


async def test_concurrent_misses_share_one_call(
    tmp_path: Path, server: IntrospectionServer
) -> None:
    server.tokens["t"] = {"active": True, "sub": "a"}
    server.delay = 0.1
    p = await provider(tmp_path, server.url, Clock())
    results = await asyncio.gather(*(p.authenticate(req("t")) for _ in range(5)))
    assert all(r is not None for r in results) and server.calls == 1


async def test_endpoint_down_or_slow_fails_closed(
    tmp_path: Path, server: IntrospectionServer
) -> None:
    server.tokens["t"] = {"active": True, "sub": "a"}
    server.delay = 1.0
    p = await provider(tmp_path, server.url, Clock(), timeout=0.2)
    assert await reason(p, "t") == (503, "introspection_unavailable")
    server.stop()
    down = await provider(tmp_path, server.url, Clock())
    assert await reason(down, "t") == (503, "introspection_unavailable")
    assert down.cached == 0  # a failure is not cached


async def test_wrong_client_secret_is_unavailable(
    tmp_path: Path, server: IntrospectionServer
) -> None:
    p = await provider(tmp_path, server.url, Clock())
    (tmp_path / "secret").write_text("wrong")
    await p.start()  # the secret is read at start
    assert await reason(p, "t") == (503, "introspection_unavailable")
