"""mTLS / SPIFFE service identities.

The identity is the SPIFFE ID of the client certificate Envoy verified during the
TLS handshake, read from the certificate itself (gRPC: ``attributes.source.certificate``,
``include_peer_certificate``; HTTP: the ``x-authz-peer-certificate`` header the
generated config sets to ``%DOWNSTREAM_PEER_CERT%``) as the X.509-SVID spec says:
exactly one URI SAN, and the ID is that URI SAN (:func:`read_svid`). Envoy's
principal is not trusted alone: it is the *first* URI SAN, or a DNS SAN when there is
none. Only when no certificate comes with the check (``authz check --principal``, a
hand-written Envoy config) is the principal taken. Each distinct certificate is parsed
once (a bounded table keyed by its digest). Headers sent by the client
(``x-forwarded-client-cert`` and the like) are never read.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class PeerSvid:
    """What a verified peer certificate says: its SPIFFE ID, or why it has none.

    ``spiffe_id`` is the certificate's single URI SAN when that is a ``spiffe://`` URI
    (None for a certificate that is no SVID). ``refusal`` is set when the certificate
    is not a valid X.509-SVID although it claims to be one.
    """

    spiffe_id: str | None
    refusal: InvalidPeerIdentity | None = None


def read_svid(pem_urlencoded: str) -> PeerSvid:
    """The SPIFFE ID of a (URL-encoded) PEM leaf certificate, per the X.509-SVID spec.

    The ID is the certificate's URI SAN, and an SVID has exactly one (X509-SVID 2): a
    second URI SAN is refused (Envoy's principal would be the first, another reader
    could take the other), and so is a certificate whose only ``spiffe://`` name is in
    a DNS SAN or the subject (Envoy falls back to those for the principal).
    """
    pem = unquote(pem_urlencoded) if "%" in pem_urlencoded else pem_urlencoded
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return PeerSvid(
            None, InvalidPeerIdentity("unreadable peer certificate", reason=R.PEER_IDENTITY_INVALID)
        )
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    except ValueError:  # a malformed extension
        return PeerSvid(
            None, InvalidPeerIdentity("malformed peer certificate", reason=R.PEER_IDENTITY_INVALID)
        )
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier) if sans else []
    claimed = [u for u in uris if u.lower().startswith("spiffe://")]
    if len(uris) > 1 and claimed:
        return PeerSvid(
            None,
            InvalidPeerIdentity(
                f"peer certificate has {len(uris)} URI SANs, an SVID has one",
                reason=R.PEER_IDENTITY_AMBIGUOUS,
            ),
        )
    if uris:  # one URI SAN, or several none of which is a SPIFFE ID: no SVID claimed
        return PeerSvid(claimed[0] if claimed else None)
    others = [str(v) for v in sans.get_values_for_type(x509.DNSName)] if sans else []
    others += [str(a.value) for a in cert.subject]
    if any("spiffe://" in v.lower() for v in others):
        return PeerSvid(
            None,
            InvalidPeerIdentity(
                "peer certificate's SPIFFE ID is not in a URI SAN",
                reason=R.PEER_IDENTITY_NOT_URI_SAN,
            ),
        )
    return PeerSvid(None)


def spiffe_id_from_certificate(pem_urlencoded: str) -> str | None:
    """The SPIFFE ID of a valid X.509-SVID (see :func:`read_svid`), else None."""
    svid = read_svid(pem_urlencoded)
    return svid.spiffe_id if svid.refusal is None else None


#: Verified peers whose answer is kept (per provider, per table); a table is cleared
#: when full.
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
        self._identities: dict[str, Identity | InvalidPeerIdentity | bool] = {}
        # certificate digest -> the same, for checks that carry the certificate.
        self._by_certificate: dict[bytes, Identity | InvalidPeerIdentity | bool] = {}

    @property
    def cached(self) -> int:
        """Number of peer identities (by principal and by certificate) currently kept."""
        return len(self._identities) + len(self._by_certificate)

    def presented(self, request: Request) -> str | None:
        """``"connection"`` when Envoy attests a peer (principal or certificate)."""
        return "connection" if request.principal or request.peer_certificate else None

    async def authenticate(self, request: Request) -> Identity | None:
        return self.authenticate_now(request)

    def authenticate_now(self, request: Request) -> Identity | None:
        """The whole check (no I/O): never :data:`~authz.identity.base.WAIT`."""
        if request.peer_certificate:
            # The digest of what Envoy sent (the same URL-encoded PEM on both
            # transports): 32 bytes a key, whatever the certificate's size.
            key = hashlib.sha256(request.peer_certificate.encode()).digest()
            found = self._by_certificate.get(key)
            if found is None:
                found = self._from_svid(read_svid(request.peer_certificate))
                if len(self._by_certificate) >= IDENTITY_CACHE_SIZE:
                    self._by_certificate.clear()
                self._by_certificate[key] = found
        else:
            found = self._identities.get(request.principal)
            if found is None:
                if not request.principal:
                    return None
                found = self._from_principal(request.principal)
                if len(self._identities) >= IDENTITY_CACHE_SIZE:
                    self._identities.clear()
                self._identities[request.principal] = found
        if isinstance(found, InvalidPeerIdentity):
            raise found
        return found if isinstance(found, Identity) else None

    def _from_svid(self, svid: PeerSvid) -> Identity | InvalidPeerIdentity | bool:
        if svid.refusal is not None:
            return svid.refusal
        if svid.spiffe_id is None:
            # A verified peer without a SPIFFE ID: not an identity this provider knows.
            return False
        if not svid.spiffe_id.startswith("spiffe://"):  # SPIFFE://...: the scheme is lowercase
            return InvalidPeerIdentity("not a SPIFFE ID", reason=R.PEER_IDENTITY_INVALID)
        return self._from_principal(svid.spiffe_id)

    def _from_principal(self, principal: str) -> Identity | InvalidPeerIdentity | bool:
        if not principal.startswith("spiffe://"):
            return False
        try:
            domain, _ = parse_spiffe_id(principal)
        except ValueError as exc:
            return InvalidPeerIdentity(str(exc), reason=R.PEER_IDENTITY_INVALID)
        if domain not in self._trust_domains:
            return InvalidPeerIdentity(
                "peer trust domain not trusted", reason=R.UNTRUSTED_TRUST_DOMAIN
            )
        return Identity(
            kind="mtls",
            subject=principal,
            provider=self.name,
            issuer="spiffe://" + domain,
        )
