"""Plain values that cross the decision core: Request in, Decision out.

Nothing here imports grpc or protobuf: transport adapters translate Envoy's
messages into a :class:`Request` and a :class:`Decision` back into theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EMPTY_HEADERS: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as Envoy saw it.

    ``headers`` has lower-case names; Envoy joins repeated headers with ``,``.
    ``path`` is the request target as received (path and query, not yet canonical).
    ``principal`` is the identity Envoy verified for the TLS peer (the URI SAN of
    the client certificate for mTLS), never anything the client sent in a header.
    """

    method: str
    path: str
    host: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    principal: str = ""
    peer_certificate: str = ""
    source_address: str = ""
    request_id: str = ""
    scheme: str = "http"
    #: The trace context of the check call itself (``traceparent``/B3 of the gRPC
    #: call's metadata: Envoy's ext_authz span), read only with ``--tracing``; a
    #: decision span prefers it to the same headers of the client's request.
    trace: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, as proven by one identity provider."""

    kind: str  # "jwt" | "mtls" | "api_key" | "anonymous"
    subject: str
    provider: str = ""
    issuer: str = ""
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: Unix time after which the credential is no longer valid (None: no expiry).
    expires_at: float | None = None


ANONYMOUS = Identity(kind="anonymous", subject="")


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one request, in transport-neutral form.

    For an allow, ``upstream_headers`` are set on the request sent upstream
    (overwriting any client-sent copy), ``remove_upstream_headers`` are removed
    from it and ``response_headers`` are added to the client's response. For a
    deny, ``status``, ``response_headers`` and ``body`` make the response the
    client gets. ``metadata`` goes to Envoy's dynamic metadata.
    ``enforced_allow`` is what was done; ``reason`` is why the true decision was
    made, which in monitor mode may be a deny that was not enforced.
    """

    allowed: bool
    status: int
    reason: str
    decision_id: str
    request_id: str = ""
    route: str = ""
    path: str = ""
    identity: Identity = ANONYMOUS
    upstream_headers: tuple[tuple[str, str], ...] = ()
    remove_upstream_headers: tuple[str, ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    policy_version: str = ""
    #: True when the true decision was a deny that monitor mode let through.
    monitored: bool = False
