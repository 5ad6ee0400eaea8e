"""API keys: the governed legacy path.

Keys are stored only as SHA-256 digests, each with an owner, scopes and an
expiry. A presented key is hashed once and looked up by digest.
"""

from __future__ import annotations

import hashlib
import time

from authz import reasons as R
from authz.errors import InvalidApiKey, MultipleCredentials
from authz.identity.base import Clock, StaticProvider
from authz.model import Identity, Request
from authz.policy.config import ApiKey, ApiKeyProviderConfig


class ApiKeyProvider(StaticProvider):
    kind = "api_key"
    connection_credential = False

    def __init__(self, config: ApiKeyProviderConfig, *, clock: Clock = time.time) -> None:
        self.name = config.name
        self._header = config.header
        self._carrier = "header:" + config.header.lower()
        self._clock = clock
        self._keys: dict[str, tuple[ApiKey, Identity]] = {
            key.sha256: (
                key,
                Identity(
                    kind="api_key",
                    subject=key.owner,
                    provider=config.name,
                    issuer=config.name,
                    scopes=frozenset(key.scopes),
                    claims={"key_id": key.id, "owner": key.owner},
                    expires_at=key.expires_at,
                ),
            )
            for key in config.keys
        }

    def presented(self, request: Request) -> str | None:
        """The header's carrier name when the key header is present (even empty)."""
        return self._carrier if self._header in request.headers else None

    async def authenticate(self, request: Request) -> Identity | None:
        return self.authenticate_now(request)

    def authenticate_now(self, request: Request) -> Identity | None:
        """The whole check (no I/O): never :data:`~authz.identity.base.WAIT`."""
        value = request.headers.get(self._header)
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise InvalidApiKey("empty API key", reason=R.API_KEY_UNKNOWN)
        if "," in value:  # Envoy joins repeated headers with ","
            raise MultipleCredentials("more than one API key")
        digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
        found = self._keys.get(digest)
        if found is None:
            raise InvalidApiKey("unknown API key", reason=R.API_KEY_UNKNOWN)
        key, identity = found
        if key.expires_at is not None and self._clock() >= key.expires_at:
            raise InvalidApiKey("API key expired", reason=R.API_KEY_EXPIRED)
        return identity
