"""Clients for a :class:`~authz.policy.redis_target.RedisTarget`: one server, a
Sentinel deployment or a Redis Cluster, with the same timeouts, pool bound and
credentials for every shared store.

- one server: a bounded blocking pool (``BlockingConnectionPool``) from the URL;
- Sentinel: redis-py's ``Sentinel(...).master_for(service)``: every new connection
  asks the sentinels where the primary is, so after a failover the next connection
  goes to the promoted replica (a pooled connection to the old primary fails once,
  is dropped and replaced);
- Cluster: ``RedisCluster`` from the startup nodes; it follows ``MOVED``/``ASK``
  and reloads the slot map after a node fails.

Either way a failed call raises a ``RedisError``/``OSError`` that the store maps to
its configured failure mode (``on_store_error``, ``on_error``, 503 for DPoP).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from authz.policy.redis_target import RedisTarget

Client = Redis | RedisCluster


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (connections to whichever node is primary now), bounded the
    way a single server's is: a call waits for a free connection, up to the store's
    timeout, rather than failing at once when ``pool_size`` are in use."""


def _auth_tls(target: RedisTarget) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if target.password is not None:
        out["password"] = target.password
        if target.username is not None:
            out["username"] = target.username
    if target.tls:
        out["ssl_ca_certs"] = target.ca_file
        out["ssl_certfile"] = target.cert_file
        out["ssl_keyfile"] = target.key_file
    return out


def _sentinel_auth_tls(target: RedisTarget) -> dict[str, Any]:
    """How to log in to the sentinels themselves (``sentinel_*`` fields)."""
    out: dict[str, Any] = {}
    if target.sentinel_password is not None:
        out["password"] = target.sentinel_password
        if target.sentinel_username is not None:
            out["username"] = target.sentinel_username
    if target.sentinel_tls:
        out["ssl"] = True
        out["ssl_ca_certs"] = target.sentinel_ca_file
        out["ssl_certfile"] = target.sentinel_cert_file
        out["ssl_keyfile"] = target.sentinel_key_file
    return out


def connect(
    target: RedisTarget,
    *,
    timeout: float,
    socket_timeout: float | None = None,
    pool_size: int = 16,
) -> Client:
    """A client for ``target``; opens nothing until its first command."""
    read_timeout = timeout if socket_timeout is None else socket_timeout
    common: dict[str, Any] = {
        "socket_timeout": read_timeout,
        "socket_connect_timeout": timeout,
        **_auth_tls(target),
    }
    if target.kind == "cluster":
        if target.tls:
            common["ssl"] = True
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.cluster],
            max_connections=pool_size,
            # a node that failed: reload the slot map at once and try again, once
            retry=Retry(NoBackoff(), 1),
            **common,
        )
    if target.kind == "sentinel":
        node_kwargs = dict(common)
        sentinel_kwargs = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # no backoff: redis-py's default retries a refused login (an
            # AuthenticationError is a ConnectionError) for seconds, past any timeout
            "retry": Retry(NoBackoff(), 1),
            **_sentinel_auth_tls(target),
        }
        if target.tls:  # the pool then makes Sentinel-managed TLS connections
            node_kwargs["ssl"] = True
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=sentinel_kwargs, **node_kwargs
        )
        primary: Redis = sentinel.master_for(
            target.service,
            connection_pool_class=BlockingSentinelPool,
            timeout=timeout,  # waiting for a free connection, as with one server
            db=target.db,
            max_connections=pool_size,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        return primary
    pool = BlockingConnectionPool.from_url(
        target.url,
        max_connections=pool_size,
        timeout=timeout,
        # a pooled connection that died with a Redis restart is replaced at once
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
        **common,
    )
    return Redis(connection_pool=pool)


async def close(client: Client) -> None:
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        await pool.disconnect()
