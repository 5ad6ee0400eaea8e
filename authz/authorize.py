"""Authorization checks on a proven identity: scopes, claim values, SPIFFE IDs.

Compiled per route at policy load into an :class:`Authorizer`; per request it
does set operations only.
"""

from __future__ import annotations

from typing import Any

from authz.errors import ClaimMismatch, InsufficientScope, SpiffeIdNotAllowed
from authz.model import Identity
from authz.policy.config import RouteConfig


def claim_texts(value: Any) -> frozenset[str]:
    """A claim value as the set of strings it can match (lists match any member)."""
    items = value if isinstance(value, list | tuple) else [value]
    out = set()
    for item in items:
        if isinstance(item, bool):
            out.add("true" if item else "false")
        elif isinstance(item, str | int | float):
            out.add(str(item))
    return frozenset(out)


class Authorizer:
    __slots__ = ("_claims", "_scopes", "_scopes_text", "_spiffe_exact", "_spiffe_prefixes")

    def __init__(self, route: RouteConfig) -> None:
        self._scopes = frozenset(route.scopes)
        self._scopes_text = tuple(sorted(route.scopes))
        self._claims = tuple((name, frozenset(values)) for name, values in route.claims)
        self._spiffe_exact = frozenset(route.spiffe_ids)
        self._spiffe_prefixes = tuple(route.spiffe_id_prefixes)

    def rules(self) -> int:
        """How many rules the route has (0: any proven identity may use it)."""
        return (
            bool(self._scopes)
            + len(self._claims)
            + bool(self._spiffe_exact or self._spiffe_prefixes)
        )

    def describe(self) -> str:
        """The route's rules, for explain: ``scopes=a b; claims.tier; spiffe_ids``."""
        parts = []
        if self._scopes:
            parts.append("scopes=" + " ".join(self._scopes_text))
        parts += [f"claims.{name}" for name, _ in self._claims]
        if self._spiffe_exact or self._spiffe_prefixes:
            parts.append("spiffe_ids")
        return "; ".join(parts)

    def check(self, identity: Identity) -> None:
        """Raise an AuthorizationError if the identity may not use the route."""
        if self._scopes and not self._scopes <= identity.scopes:
            raise InsufficientScope(self._scopes_text)  # element: scopes (set by the class)
        for name, allowed in self._claims:
            value = identity.claims.get(name)
            if value is None or not (claim_texts(value) & allowed):
                exc = ClaimMismatch(f"claim {name} does not hold an allowed value")
                exc.element = f"claims.{name}"
                raise exc
        if identity.kind == "mtls" and (self._spiffe_exact or self._spiffe_prefixes):
            sid = identity.subject
            if sid not in self._spiffe_exact and not sid.startswith(self._spiffe_prefixes):
                raise SpiffeIdNotAllowed("SPIFFE ID not allowed on this route")  # spiffe_ids
