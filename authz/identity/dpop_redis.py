"""The DPoP replay cache shared through Redis: one ``SET key 1 NX PX ttl`` per proof
(:class:`~authz.identity.dpop.ReplayCache`). Every process that names the same
store and prefix refuses a ``jti`` any of them has seen within the window. The
client follows the rate limiter's (:mod:`authz.ratelimit.redis_store`): a bounded
blocking pool, the store's timeout on every command, one reconnect. Any Redis
failure is ``dpop_replay_unavailable`` (503): a proof is never let through
unchecked. Keys hold a SHA-256 of the proof key's thumbprint and ``jti``, never
the values a client chose.
"""

from __future__ import annotations

import hashlib
import math

from redis.exceptions import RedisError

from authz.errors import DpopReplayUnavailable
from authz.policy.ratelimit_config import RedisStoreConfig
from authz.redis_connect import Client, close, connect

KEY_PREFIX = "authz:dpop:"


class RedisReplayCache:
    """``jti`` keys in Redis, each expiring when its proof leaves the window."""

    def __init__(self, config: RedisStoreConfig) -> None:
        self.config = config
        # one server, Sentinel or Cluster (one key per command: any slot will do)
        self.client: Client = connect(
            config.deployment, timeout=config.timeout, pool_size=config.pool_size
        )

    async def first_use(self, key: str, until: float, now: float) -> bool:
        name = KEY_PREFIX + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
        ttl_ms = max(1, math.ceil((until - now) * 1000))
        try:
            created = await self.client.set(name, b"1", nx=True, px=ttl_ms)
        except (RedisError, OSError) as exc:
            raise DpopReplayUnavailable(f"DPoP replay store: {type(exc).__name__}") from None
        return bool(created)

    async def aclose(self) -> None:
        await close(self.client)
