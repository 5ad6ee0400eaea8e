"""mTLS / SPIFFE service identities.

The identity is the SPIFFE ID that Envoy verified during the TLS handshake:
``attributes.source.principal`` (Envoy fills it with the URI SAN of the peer
certificate) or, failing that, the URI SAN of the peer certificate Envoy
forwards. Headers sent by the client (``x-forwarded-client-cert`` and the like)
are never read.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from cryptography import x509

from authz import reasons as R
from authz.errors import InvalidPeerIdentity
from authz.identity.base import StaticProvider
from authz.model import Identity, Request
from authz.policy.config import MtlsProviderConfig

_MAX_SPIFFE_ID = 2048
# SPIFFE ID spec: path segments of letters, digits, '.', '-' and '_' only.
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")


def parse_spiffe_id(value: str) -> tuple[str, str]:
    """Split a SPIFFE ID into (trust domain, path); raise ValueError if it is not one."""
    if not value.startswith("spiffe://") or len(value) > _MAX_SPIFFE_ID:
        raise ValueError("not a SPIFFE ID")
    rest = value[len("spiffe://") :]
    domain, _, path = rest.partition("/")
    if not _TRUST_DOMAIN.match(domain):
        raise ValueError("invalid trust domain")
    if any(c in rest for c in "?#") or "//" in rest or rest.endswith("/"):
        raise ValueError("invalid SPIFFE ID path")
    for seg in path.split("/") if path else ():
        if seg in (".", "..") or not _SEGMENT.match(seg):
            raise ValueError("invalid SPIFFE ID path segment")
    return domain, "/" + path if path else ""


def spiffe_id_from_certificate(pem_urlencoded: str) -> str | None:
    """The single spiffe:// URI SAN of a (URL-encoded) PEM certificate, if any."""
    try:
        cert = x509.load_pem_x509_certificate(unquote(pem_urlencoded).encode("ascii"))
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound, UnicodeEncodeError):
        return None
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    return spiffe[0] if len(spiffe) == 1 else None


#: Verified peers whose Identity is kept (per provider); the table is cleared when full.
IDENTITY_CACHE_SIZE = 4096


class MtlsProvider(StaticProvider):
    kind = "mtls"
    #: The peer identity is a property of the connection: in a mesh every request
    #: has one, so it never makes a request carry "two credentials".
    connection_credential = True

    def __init__(self, config: MtlsProviderConfig) -> None:
        self.name = config.name
        self._trust_domains = frozenset(config.trust_domains)
        # principal -> Identity: a peer's identity is parsed once, and the same object
        # is handed out again (the engine keys its header blocks on it).
        self._identities: dict[str, Identity] = {}

    @property
    def cached(self) -> int:
        """Number of peer identities currently kept."""
        return len(self._identities)

    def presented(self, request: Request) -> str | None:
        """``"connection"`` when Envoy attests a peer (principal or certificate)."""
        return "connection" if request.principal or request.peer_certificate else None

    async def authenticate(self, request: Request) -> Identity | None:
        return self.authenticate_now(request)

    def authenticate_now(self, request: Request) -> Identity | None:
        """The whole check (no I/O): never :data:`~authz.identity.base.WAIT`."""
        principal = request.principal
        found = self._identities.get(principal)
        if found is not None:
            return found
        if not principal.startswith("spiffe://") and request.peer_certificate:
            principal = spiffe_id_from_certificate(request.peer_certificate) or principal
        if not principal:
            return None
        if not principal.startswith("spiffe://"):
            # A verified peer without a SPIFFE ID: not an identity this provider knows.
            return None
        try:
            domain, _ = parse_spiffe_id(principal)
        except ValueError as exc:
            raise InvalidPeerIdentity(str(exc), reason=R.PEER_IDENTITY_INVALID) from exc
        if domain not in self._trust_domains:
            raise InvalidPeerIdentity(
                "peer trust domain not trusted", reason=R.UNTRUSTED_TRUST_DOMAIN
            )
        identity = Identity(
            kind="mtls",
            subject=principal,
            provider=self.name,
            issuer="spiffe://" + domain,
        )
        if principal == request.principal:  # not derived from a certificate
            if len(self._identities) >= IDENTITY_CACHE_SIZE:
                self._identities.clear()
            self._identities[principal] = identity
        return identity
