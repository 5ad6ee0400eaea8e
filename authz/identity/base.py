"""The protocol every identity provider implements.

A provider *abstains* (returns None) when its credential is absent from the
request and *rejects* (raises an :class:`~authz.errors.AuthenticationError`) when
the credential is present but bad. One file per method; the registry in
:mod:`authz.identity.registry` maps a config type to its class.

Before any provider verifies anything, the engine asks the providers of a route
with several of them where their credential is (:meth:`IdentityProvider.presented`):
two different credentials in one request are ``multiple_credentials``. A
credential that is a property of the connection (``connection_credential``: the
mTLS peer identity) is not one the client chose to send and never counts.

A provider may also answer without a coroutine (:meth:`SyncAnswer.authenticate_now`):
the same answer :meth:`IdentityProvider.authenticate` gives when that needs no I/O
(an API key, a peer identity, a cached JWT), or :data:`WAIT` when it does (a JWT to
verify, keys to fetch). The identity stage asks that first, so a cached credential
costs a call, not two coroutines; a provider without it is always awaited.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Final, Literal, Protocol

from authz.model import Identity, Request

Clock = Callable[[], float]
#: Fetches a URL and returns its body; raises OSError (or a subclass) on failure.
Fetcher = Callable[[str, float], Awaitable[bytes]]


class Wait(enum.Enum):
    """The type of :data:`WAIT`."""

    WAIT = "wait"


#: ``authenticate_now``'s answer when only ``authenticate`` (awaited) can decide.
WAIT: Final = Wait.WAIT
#: What ``authenticate_now`` returns: an identity, None (abstain) or WAIT.
Answer = Identity | None | Literal[Wait.WAIT]


class IdentityProvider(Protocol):
    name: str
    kind: str
    #: True when the credential comes with the connection (the mTLS peer identity
    #: Envoy verified), not in the request: it never counts toward
    #: ``multiple_credentials`` and, on an ``exclusive`` route, is consulted only
    #: when the request carries no credential of its own.
    connection_credential: bool

    async def start(self) -> None:
        """Prepare (load or fetch keys). Called once before the policy serves."""

    def ready(self) -> bool:
        """True once the provider can verify credentials."""

    def presented(self, request: Request) -> str | None:
        """Where this provider's credential is in ``request``, None if it is absent.

        Cheap (no parsing, hashing or verification) and never raises. The answer
        names the carrier (``"header:authorization"``, ``"query:access_token"``), so
        that providers reading the same one (two issuers on ``authorization``) count
        as one credential. It is not None whenever :meth:`authenticate` would not
        abstain.
        """

    async def authenticate(self, request: Request) -> Identity | None:
        """The identity the request proves, None if no credential of this kind is present."""

    async def aclose(self) -> None:
        """Stop background work (an :class:`authz.runtime.Runtime`: the policy that
        built the provider starts and closes it)."""


class SyncAnswer(Protocol):
    """A provider that can often answer without a coroutine (optional, see above)."""

    def authenticate_now(self, request: Request) -> Answer:
        """What :meth:`IdentityProvider.authenticate` would return (or raise) if that
        needs no I/O, else :data:`WAIT`. Never waits."""


def answer_now(provider: IdentityProvider) -> Callable[[Request], Answer]:
    """``provider.authenticate_now``, or a function that always says WAIT."""
    now: Callable[[Request], Answer] | None = getattr(provider, "authenticate_now", None)
    return now if now is not None else _always_wait


def _always_wait(request: Request) -> Answer:
    return WAIT


class StaticProvider:
    """Lifecycle for providers whose configuration is all they need (no I/O)."""

    async def start(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
