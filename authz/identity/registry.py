"""Provider type -> implementation. Adding a method is a new file plus a line here."""

from __future__ import annotations

import time

from authz.identity.api_key import ApiKeyProvider
from authz.identity.base import Clock, Fetcher, IdentityProvider
from authz.identity.mtls import MtlsProvider
from authz.policy.config import (
    ApiKeyProviderConfig,
    JwtProviderConfig,
    MtlsProviderConfig,
    ProviderConfig,
)
from authz.telemetry.metrics import Metrics


def build_provider(
    config: ProviderConfig,
    *,
    clock: Clock = time.time,
    fetcher: Fetcher | None = None,
    metrics: Metrics | None = None,
) -> IdentityProvider:
    if isinstance(config, JwtProviderConfig):
        from authz.identity.jwt import JwtProvider

        return JwtProvider(config, clock=clock, fetcher=fetcher, metrics=metrics)
    if isinstance(config, MtlsProviderConfig):
        return MtlsProvider(config)
    if isinstance(config, ApiKeyProviderConfig):
        return ApiKeyProvider(config, clock=clock)
    raise TypeError(f"unknown provider config {type(config).__name__}")
