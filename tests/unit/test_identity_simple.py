"""API key and mTLS identity providers."""

from __future__ import annotations

import datetime as dt
import hashlib
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authz.errors import InvalidApiKey, InvalidPeerIdentity, MultipleCredentials
from authz.identity.api_key import ApiKeyProvider
from authz.identity.mtls import MtlsProvider, parse_spiffe_id, read_svid
from authz.model import Request
from authz.policy.config import ApiKey, ApiKeyProviderConfig, MtlsProviderConfig

KEY = "demo-key-0123456789abcdef"
OTHER = "other-key-fedcba9876543210"
EXPIRED = "expired-key-0000"
NOW = 1_800_000_000.0


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture()
def api_keys(clock: Clock) -> ApiKeyProvider:
    config = ApiKeyProviderConfig(
        name="legacy",
        header="x-api-key",
        keys=(
            ApiKey(id="k1", sha256=sha(KEY), owner="reporting-team", scopes=("orders:read", "orders:list"), expires_at=NOW + 3600),
            ApiKey(id="k2", sha256=sha(OTHER), owner="billing", expires_at=None),
            ApiKey(id="k3", sha256=sha(EXPIRED), owner="old-team", expires_at=NOW - 1),
        ),
    )  # fmt: skip
    return ApiKeyProvider(config, clock=clock)


def req(headers: dict[str, str] | None = None, **kw: str) -> Request:
    return Request(method="GET", path="/x", headers=headers or {}, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- API keys


async def test_api_key_absent_abstains(api_keys: ApiKeyProvider) -> None:
    assert await api_keys.authenticate(req()) is None
    assert await api_keys.authenticate(req({"authorization": f"Bearer {KEY}"})) is None


async def test_api_key_valid(api_keys: ApiKeyProvider) -> None:
    identity = await api_keys.authenticate(req({"x-api-key": KEY}))
    assert identity is not None
    assert identity.kind == "api_key"
    assert identity.subject == "reporting-team"  # the owner
    assert identity.provider == "legacy"
    assert identity.issuer == "legacy"
    assert identity.scopes == frozenset({"orders:read", "orders:list"})
    assert identity.claims["key_id"] == "k1"
    assert identity.expires_at == NOW + 3600
    # the key itself is not in the identity
    assert KEY not in repr(identity)


async def test_api_key_surrounding_whitespace_ignored(api_keys: ApiKeyProvider) -> None:
    identity = await api_keys.authenticate(req({"x-api-key": f"  {KEY} "}))
    assert identity is not None and identity.subject == "reporting-team"


async def test_api_key_without_scopes_or_expiry(api_keys: ApiKeyProvider) -> None:
    identity = await api_keys.authenticate(req({"x-api-key": OTHER}))
    assert identity is not None
    assert identity.subject == "billing"
    assert identity.scopes == frozenset()


@pytest.mark.parametrize("value", ["wrong", KEY.upper(), KEY + "x", KEY[:-1], sha(KEY)])
async def test_api_key_unknown(api_keys: ApiKeyProvider, value: str) -> None:
    with pytest.raises(InvalidApiKey) as info:
        await api_keys.authenticate(req({"x-api-key": value}))
    assert info.value.reason == "api_key_unknown"
    assert info.value.status == 401
    assert info.value.challenge_error == "invalid_token"


@pytest.mark.parametrize("value", ["", "   "])
async def test_api_key_empty_is_rejected(api_keys: ApiKeyProvider, value: str) -> None:
    with pytest.raises(InvalidApiKey):
        await api_keys.authenticate(req({"x-api-key": value}))


async def test_api_key_expired(api_keys: ApiKeyProvider, clock: Clock) -> None:
    with pytest.raises(InvalidApiKey) as info:
        await api_keys.authenticate(req({"x-api-key": EXPIRED}))
    assert info.value.reason == "api_key_expired"
    # a valid key expires exactly at expires_at, on the injected clock
    clock.now = NOW + 3599
    assert await api_keys.authenticate(req({"x-api-key": KEY})) is not None
    clock.now = NOW + 3600
    with pytest.raises(InvalidApiKey) as info:
        await api_keys.authenticate(req({"x-api-key": KEY}))
    assert info.value.reason == "api_key_expired"


@pytest.mark.parametrize("value", [f"{KEY},{OTHER}", f"{KEY}, {KEY}", f"{KEY},"])
async def test_two_api_keys_are_multiple_credentials(api_keys: ApiKeyProvider, value: str) -> None:
    with pytest.raises(MultipleCredentials) as info:
        await api_keys.authenticate(req({"x-api-key": value}))
    assert info.value.reason == "multiple_credentials"
    assert info.value.status == 401


async def test_api_key_custom_header(clock: Clock) -> None:
    provider = ApiKeyProvider(
        ApiKeyProviderConfig(name="p", header="x-key", keys=(ApiKey("k", sha(KEY), "o"),)),
        clock=clock,
    )
    assert await provider.authenticate(req({"x-api-key": KEY})) is None
    identity = await provider.authenticate(req({"x-key": KEY}))
    assert identity is not None and identity.subject == "o"


# --------------------------------------------------------------------------- mTLS


def make_cert(*uris: str, dns: tuple[str, ...] = ()) -> str:
    """A real self-signed certificate with the given URI SANs, PEM, URL-encoded like Envoy."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return quote(pem, safe="")


@pytest.fixture(scope="module")
def cert_orders() -> str:
    return make_cert("spiffe://prod.example/ns/orders/sa/api")


@pytest.fixture()
def mesh() -> MtlsProvider:
    return MtlsProvider(MtlsProviderConfig(name="mesh", trust_domains=("prod.example", "td.local")))


async def test_mtls_principal(mesh: MtlsProvider) -> None:
    identity = await mesh.authenticate(req(principal="spiffe://prod.example/ns/orders/sa/api"))
    assert identity is not None
    assert identity.kind == "mtls"
    assert identity.subject == "spiffe://prod.example/ns/orders/sa/api"
    assert identity.issuer == "spiffe://prod.example"
    assert identity.provider == "mesh"
    assert identity.scopes == frozenset()


async def test_mtls_certificate_uri_san(mesh: MtlsProvider, cert_orders: str) -> None:
    assert "%0A" in cert_orders and "-----BEGIN" in cert_orders  # URL-encoded PEM, as Envoy sends
    assert read_svid(cert_orders).spiffe_id == "spiffe://prod.example/ns/orders/sa/api"
    identity = await mesh.authenticate(req(peer_certificate=cert_orders))
    assert identity is not None
    assert identity.subject == "spiffe://prod.example/ns/orders/sa/api"
    assert identity.issuer == "spiffe://prod.example"


async def test_mtls_certificate_used_when_principal_is_not_spiffe(
    mesh: MtlsProvider, cert_orders: str
) -> None:
    identity = await mesh.authenticate(req(principal="workload", peer_certificate=cert_orders))
    assert identity is not None
    assert identity.subject == "spiffe://prod.example/ns/orders/sa/api"


async def test_mtls_certificate_wins_over_principal(mesh: MtlsProvider, cert_orders: str) -> None:
    # Envoy's principal is only the first URI SAN (or a DNS SAN): the certificate decides.
    identity = await mesh.authenticate(
        req(principal="spiffe://td.local/ns/a", peer_certificate=cert_orders)
    )
    assert identity is not None and identity.subject == "spiffe://prod.example/ns/orders/sa/api"


def test_certificate_without_spiffe_san() -> None:
    for cert in (
        make_cert(dns=("a.example",)),
        make_cert(),
        make_cert("https://a.example/x"),
        make_cert("https://a.example/x", "urn:x:y"),  # no SPIFFE ID claimed at all
    ):
        svid = read_svid(cert)
        assert (svid.spiffe_id, svid.refusal) == (None, None)
    refusal = read_svid("not a certificate").refusal
    assert refusal is not None and refusal.reason == "peer_identity_invalid"


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        # two URI SANs: Envoy's principal is the first, the spec allows exactly one
        (
            make_cert("spiffe://prod.example/a", "spiffe://prod.example/b"),
            "peer_identity_ambiguous",
        ),
        (make_cert("spiffe://prod.example/a", "https://a.example/"), "peer_identity_ambiguous"),
        # the SPIFFE ID in a DNS SAN: Envoy falls back to it for the principal
        (make_cert(dns=("spiffe://prod.example/ns/a",)), "peer_identity_not_uri_san"),
        (make_cert("SPIFFE://prod.example/ns/a"), "peer_identity_invalid"),
    ],
)
async def test_mtls_certificate_not_an_svid_is_refused(
    mesh: MtlsProvider, cert: str, reason: str
) -> None:
    principal = "spiffe://prod.example/a" if reason == "peer_identity_ambiguous" else ""
    for _ in range(2):  # the second answer comes from the table, the same
        with pytest.raises(InvalidPeerIdentity) as info:
            await mesh.authenticate(req(principal=principal, peer_certificate=cert))
        assert (info.value.reason, info.value.status) == (reason, 401)
    assert mesh.cached == 1


async def test_mtls_certificate_parsed_once(mesh: MtlsProvider, cert_orders: str) -> None:
    first = await mesh.authenticate(req(peer_certificate=cert_orders))
    again = await mesh.authenticate(req(peer_certificate=cert_orders))
    assert first is again and mesh.cached == 1


async def test_mtls_no_principal_abstains(mesh: MtlsProvider) -> None:
    assert await mesh.authenticate(req()) is None
    # a verified peer without a SPIFFE ID is not an identity for this provider
    assert await mesh.authenticate(req(principal="CN=workload")) is None
    assert await mesh.authenticate(req(peer_certificate=make_cert(dns=("a.example",)))) is None


async def test_mtls_client_headers_are_never_trusted(mesh: MtlsProvider, cert_orders: str) -> None:
    xfcc = f'By=spiffe://prod.example/ns/gw;URI=spiffe://prod.example/ns/admin;Cert="{cert_orders}"'
    spoofed = {
        "x-forwarded-client-cert": xfcc,
        "x-authz-subject": "spiffe://prod.example/ns/admin",
        "x-authz-identity-type": "mtls",
        "x-ssl-client-cert": cert_orders,
    }
    assert await mesh.authenticate(req(spoofed)) is None
    # and when Envoy did verify a peer, its principal (not the headers) is the identity
    identity = await mesh.authenticate(req(spoofed, principal="spiffe://td.local/ns/web"))
    assert identity is not None and identity.subject == "spiffe://td.local/ns/web"


async def test_mtls_untrusted_trust_domain(mesh: MtlsProvider) -> None:
    for principal in ("spiffe://evil.example/ns/orders/sa/api", "spiffe://prod.example.evil/x"):
        with pytest.raises(InvalidPeerIdentity) as info:
            await mesh.authenticate(req(principal=principal))
        assert info.value.reason == "untrusted_trust_domain"
        assert info.value.status == 401
    with pytest.raises(InvalidPeerIdentity) as info:
        await mesh.authenticate(req(peer_certificate=make_cert("spiffe://evil.example/x")))
    assert info.value.reason == "untrusted_trust_domain"


MALFORMED = [
    "spiffe://",
    "spiffe:///ns/a",
    "spiffe://Prod.Example/ns/a",
    "spiffe://prod.example:8443/ns/a",
    "spiffe://user@prod.example/ns/a",
    "spiffe://prod.example/ns/a/",
    "spiffe://prod.example/ns//a",
    "spiffe://prod.example/ns/../admin",
    "spiffe://prod.example/ns/./a",
    "spiffe://prod.example/ns/a?x=1",
    "spiffe://prod.example/ns/a#f",
    "spiffe://prod.example/" + "a" * 2100,
]


@pytest.mark.parametrize("principal", MALFORMED)
async def test_mtls_malformed_spiffe_id(mesh: MtlsProvider, principal: str) -> None:
    with pytest.raises(InvalidPeerIdentity) as info:
        await mesh.authenticate(req(principal=principal))
    assert info.value.reason == "peer_identity_invalid"


@pytest.mark.parametrize(
    "principal",
    [
        "spiffe://prod.example/ns/a b",
        "spiffe://prod.example/ns/%2e%2e/admin",
        "spiffe://prod.example/ns/*",
    ],
)
def test_spiffe_path_charset(principal: str) -> None:
    with pytest.raises(ValueError):
        parse_spiffe_id(principal)


def test_parse_spiffe_id() -> None:
    assert parse_spiffe_id("spiffe://td.local/ns/a/sa/b") == ("td.local", "/ns/a/sa/b")
    assert parse_spiffe_id("spiffe://td.local") == ("td.local", "")
    for bad in ("https://td.local/x", "SPIFFE://td.local/x", "td.local/x"):
        with pytest.raises(ValueError):
            parse_spiffe_id(bad)
