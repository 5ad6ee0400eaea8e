"""Fixtures shared by the integration and end-to-end tests: real keys, a real issuer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authz import devissuer
from tests.redis_server import redis_server  # noqa: F401  (a fixture: a real redis-server)
from tests.redis_topologies import redis_cluster, redis_sentinel  # noqa: F401  (fixtures)
from tests.support import ServiceProcess


@pytest.fixture(scope="session")
def dev_key() -> devissuer.DevKey:
    return devissuer.generate_key("ES256")


@pytest.fixture()
def issuer(dev_key: devissuer.DevKey) -> Iterator[devissuer.DevIssuerServer]:
    server = devissuer.DevIssuerServer([dev_key]).start()
    yield server
    server.stop()


@pytest.fixture()
def mint(dev_key: devissuer.DevKey, issuer: devissuer.DevIssuerServer) -> Callable[..., str]:
    def _mint(subject: str = "alice", scopes: str = "orders:read", **kw: object) -> str:
        kw.setdefault("audience", "orders")
        return devissuer.mint(dev_key, issuer=issuer.url, subject=subject, scopes=scopes, **kw)  # type: ignore[arg-type]

    return _mint


@pytest.fixture()
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def _start(policy: Path, *extra: str, wait: bool = True) -> ServiceProcess:
        svc = ServiceProcess(policy, tmp_path, *extra)
        started.append(svc)
        return svc.wait_serving() if wait else svc

    yield _start
    for svc in started:
        svc.stop()
