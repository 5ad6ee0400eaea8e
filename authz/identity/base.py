"""The protocol every identity provider implements.

A provider *abstains* (returns None) when its credential is absent from the
request and *rejects* (raises an :class:`~authz.errors.AuthenticationError`) when
the credential is present but bad. One file per method; the registry in
:mod:`authz.identity.registry` maps a config type to its class.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from authz.model import Identity, Request

Clock = Callable[[], float]
#: Fetches a URL and returns its body; raises OSError (or a subclass) on failure.
Fetcher = Callable[[str, float], Awaitable[bytes]]


class IdentityProvider(Protocol):
    name: str
    kind: str

    async def start(self) -> None:
        """Prepare (load or fetch keys). Called once before the policy serves."""

    def ready(self) -> bool:
        """True once the provider can verify credentials."""

    async def authenticate(self, request: Request) -> Identity | None:
        """The identity the request proves, None if no credential of this kind is present."""

    async def close(self) -> None:
        """Stop background work."""


class StaticProvider:
    """Lifecycle for providers whose configuration is all they need (no I/O)."""

    async def start(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None
