"""Provider type -> implementation. Adding a method is a new file plus a line here."""

from __future__ import annotations

import time
from collections.abc import Mapping

from authz.identity.api_key import ApiKeyProvider
from authz.identity.base import Clock, Fetcher, IdentityProvider
from authz.identity.mtls import MtlsProvider
from authz.policy.config import (
    ApiKeyProviderConfig,
    IntrospectionProviderConfig,
    JwtProviderConfig,
    MtlsProviderConfig,
    ProviderConfig,
)
from authz.policy.ratelimit_config import RedisStoreConfig
from authz.telemetry.metrics import Metrics


def build_provider(
    config: ProviderConfig,
    *,
    clock: Clock = time.time,
    fetcher: Fetcher | None = None,
    metrics: Metrics | None = None,
    stores: Mapping[str, RedisStoreConfig] | None = None,
) -> IdentityProvider:
    """The provider for ``config``; ``stores`` are the policy's Redis stores (a DPoP
    replay cache may be shared through one)."""
    if isinstance(config, JwtProviderConfig):
        from authz.identity.jwt import JwtProvider

        replay = None
        store = config.dpop.replay_store if config.dpop is not None else None
        if store is not None:
            from authz.identity.dpop_redis import RedisReplayCache

            replay = RedisReplayCache((stores or {})[store])
        return JwtProvider(config, clock=clock, fetcher=fetcher, metrics=metrics, replay=replay)
    if isinstance(config, MtlsProviderConfig):
        return MtlsProvider(config)
    if isinstance(config, IntrospectionProviderConfig):
        from authz.identity.introspection import IntrospectionProvider

        return IntrospectionProvider(config, clock=clock)
    if isinstance(config, ApiKeyProviderConfig):
        return ApiKeyProvider(config, clock=clock)
    raise TypeError(f"unknown provider config {type(config).__name__}")
