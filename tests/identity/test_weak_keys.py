"""Weak key material in a JWKS is refused, logged once, and never verifies a token.

Every key here is really generated and every token really signed with it: a
512-bit or 1024-bit RSA key, RSA with e=3, an EC key on secp256k1 (allowed only
for ES256K), an EC point off its curve, an RSA key with an even exponent (no
private key exists for it, so its "token" is forged), and short HMAC secrets.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.warnings import InsecureKeyLengthWarning

from authz import devissuer
from authz.devissuer import DevKey
from authz.errors import AuthzError, DependencyError, PolicyError
from authz.identity.jwk import KeyRequirements, parse_key_set
from authz.identity.jwt import JwtProvider
from authz.model import Request
from authz.policy.config import JwtProviderConfig
from authz.policy.loader import load_policy_bytes

ISSUER = "https://issuer.test"
T0 = 1_800_000_000.0


def clock() -> float:
    return T0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _probable_prime(bits: int) -> int:
    while True:
        n = secrets.randbits(bits) | (3 << (bits - 2)) | 1  # top two bits: n = p*q is full size
        if all(n % p for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)) and _miller_rabin(n):
            return n


def _miller_rabin(n: int, rounds: int = 40) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def rsa_key(bits: int, exponent: int = 65537) -> DevKey:
    """A real RSA key of any size; cryptography only generates 1024 bits and up."""
    if bits >= 1024:
        private = rsa.generate_private_key(public_exponent=exponent, key_size=bits)
    else:
        while True:
            p, q = _probable_prime(bits // 2), _probable_prime(bits // 2)
            if p != q and (p - 1) % exponent and (q - 1) % exponent:
                break
        d = pow(exponent, -1, (p - 1) * (q - 1))
        private = rsa.RSAPrivateNumbers(
            p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
            rsa.RSAPublicNumbers(exponent, p * q),
        ).private_key()  # fmt: skip
    assert private.key_size == bits
    return DevKey(private, "RS256", f"rsa-{bits}-e{exponent}")


@pytest.fixture(scope="module")
def good() -> DevKey:
    return devissuer.generate_key("ES256")


@pytest.fixture(scope="module")
def weak() -> dict[str, DevKey]:
    return {
        "rsa512": rsa_key(512),
        "rsa1024": rsa_key(1024),
        "rsa2048": rsa_key(2048),
        "e3": rsa_key(2048, 3),
        "k1": DevKey(ec.generate_private_key(ec.SECP256K1()), "ES256K", "ec-secp256k1"),
    }


def jwk_of(key: DevKey) -> dict[str, Any]:
    if isinstance(key.private_key, ec.EllipticCurvePrivateKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.private_key.public_key(), as_dict=True)
    else:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.private_key.public_key(), as_dict=True)
    return dict(jwk, kid=key.kid, alg=key.alg, use="sig")


def even_exponent_jwk(base: DevKey) -> dict[str, Any]:
    return dict(jwk_of(base), e=b64((65538).to_bytes(3, "big")), kid="rsa-even-e")


def off_curve_jwk(base: DevKey) -> dict[str, Any]:
    # A P-256 point with y changed: not on the curve (the invalid-curve attack).
    jwk = base.public_jwk()
    y = bytearray(base64.urlsafe_b64decode(jwk["y"] + "=="))
    y[-1] ^= 1
    return dict(jwk, y=b64(bytes(y)), kid="ec-off-curve")


def token(key: DevKey, **headers: Any) -> str:
    with warnings.catch_warnings():  # PyJWT warns when signing with a short RSA key
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return devissuer.mint(
            key, issuer=ISSUER, subject="alice", audience="api", now=T0, headers=headers or None
        )


def request(tok: str) -> Request:
    return Request(method="GET", path="/", headers={"authorization": f"Bearer {tok}"})


MakeProvider = Callable[..., Awaitable[JwtProvider]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[MakeProvider]:
    made: list[JwtProvider] = []

    async def factory(members: list[Mapping[str, Any]], **kw: Any) -> JwtProvider:
        path = tmp_path / f"jwks-{len(made)}.json"
        path.write_text(json.dumps({"keys": members}))
        values: dict[str, Any] = {
            "name": "dev",
            "issuer": ISSUER,
            "audiences": ("api",),
            "algorithms": ("RS256", "ES256"),
            "jwks_file": str(path),
        }
        values.update(kw)
        provider = JwtProvider(JwtProviderConfig(**values), clock=clock)
        made.append(provider)
        await provider.start()
        return provider

    yield factory
    for p in made:
        await p.aclose()


async def deny_reason(provider: JwtProvider, tok: str) -> str:
    with pytest.raises(AuthzError) as err:
        await provider.authenticate(request(tok))
    return err.value.reason


def refusals(caplog: pytest.LogCaptureFixture, kid: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"key {kid!r} refused" in r.getMessage()]


UNKNOWN_KID = "token_unknown_kid"


@pytest.mark.parametrize(
    ("which", "why", "settings", "denied"),
    [
        ("rsa512", "RSA modulus of 512 bits is under the minimum of 2048", {}, UNKNOWN_KID),
        ("rsa1024", "RSA modulus of 1024 bits is under the minimum of 2048", {}, UNKNOWN_KID),
        ("rsa2048", "RSA modulus of 2048 bits is under the minimum of 3072",
         {"min_rsa_bits": 3072}, UNKNOWN_KID),
        ("e3", "RSA public exponent 3 is under 65537", {}, UNKNOWN_KID),
        # PyJWT binds ES256 to P-256, so a secp256k1 key only ever signs ES256K tokens,
        # and ES256K is not enabled: the token is refused for its alg first.
        ("k1", "EC curve 'secp256k1' is not allowed", {}, "token_algorithm_not_allowed"),
    ],
)  # fmt: skip
async def test_weak_key_is_refused_logged_once_and_its_tokens_denied(
    make: MakeProvider,
    good: DevKey,
    weak: dict[str, DevKey],
    caplog: pytest.LogCaptureFixture,
    which: str,
    why: str,
    settings: dict[str, Any],
    denied: str,
) -> None:
    key = weak[which]
    with caplog.at_level(logging.WARNING, logger="authz.jwks"):
        provider = await make([good.public_jwk(), jwk_of(key)], **settings)
        assert [k.kid for k in provider.jwks.keys] == [good.kid]
        tok = token(key)
        for _ in range(3):  # every request, and the unknown-kid refresh it may cause
            assert await deny_reason(provider, tok) == denied
            assert provider.jwks.config.jwks_file is not None
            os.utime(provider.jwks.config.jwks_file, ns=(secrets.randbits(40),) * 2)
            assert await provider.jwks.refresh()  # the same document, read again
    assert provider.jwks.fetches == 4
    [line] = refusals(caplog, key.kid)
    assert why in line and "provider dev" in line
    assert await provider.authenticate(request(token(good))) is not None


async def test_secp256k1_is_accepted_when_es256k_is_enabled(
    make: MakeProvider, weak: dict[str, DevKey]
) -> None:
    provider = await make([jwk_of(weak["k1"])], algorithms=("ES256K",))
    identity = await provider.authenticate(request(token(weak["k1"])))
    assert identity is not None and identity.subject == "alice"


async def test_rsa_at_the_raised_minimum_is_accepted(
    make: MakeProvider, weak: dict[str, DevKey]
) -> None:
    provider = await make([jwk_of(weak["rsa2048"])], min_rsa_bits=2048)
    assert await provider.authenticate(request(token(weak["rsa2048"]))) is not None


def test_a_provider_cannot_lower_the_floor() -> None:
    config = JwtProviderConfig(name="p", issuer=ISSUER, audiences=("a",), min_rsa_bits=512)
    assert KeyRequirements.for_provider(config).min_rsa_bits == 2048


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (even_exponent_jwk, "RSA public exponent 65538 is even"),
        (off_curve_jwk, "unparsable key"),
        (lambda k: dict(k.public_jwk(), alg="ES384", kid="p256-as-es384"),
         "EC curve P-256 does not fit alg ES384"),
        (lambda k: dict(k.public_jwk(), crv="P-192", kid="p192"), "EC curve 'P-192' is not allowed"),
    ],
)  # fmt: skip
async def test_keys_without_a_private_half_are_refused(
    make: MakeProvider,
    good: DevKey,
    weak: dict[str, DevKey],
    caplog: pytest.LogCaptureFixture,
    member: Callable[[DevKey], dict[str, Any]],
    why: str,
) -> None:
    base = weak["rsa2048"] if member is even_exponent_jwk else good
    bad = member(base)
    with caplog.at_level(logging.WARNING, logger="authz.jwks"):
        provider = await make([good.public_jwk(), bad], algorithms=("RS256", "ES256", "ES384"))
    [line] = refusals(caplog, bad["kid"])
    assert why in line
    # A token naming the refused key, signed with the key it was derived from.
    signer = DevKey(base.private_key, bad["alg"] if bad["alg"] != "ES384" else "ES256", bad["kid"])
    assert await deny_reason(provider, token(signer)) == "token_unknown_kid"


@pytest.mark.parametrize(
    ("secret_bytes", "alg", "allowed", "refused"),
    [
        (16, "HS256", ("HS256",), True),
        (31, "HS256", ("HS256",), True),
        (32, "HS256", ("HS256",), False),
        (32, "HS512", ("HS512",), True),
        (64, "HS512", ("HS512",), False),
        (32, None, ("HS256", "HS512"), True),  # without alg it may be used with HS512
        (16, "HS256", ("ES256",), False),  # HS* not allowed: the secret is never used
    ],
)
def test_short_hmac_secrets_are_refused(
    secret_bytes: int, alg: str | None, allowed: tuple[str, ...], refused: bool
) -> None:
    member: dict[str, Any] = {"kty": "oct", "kid": "h", "k": b64(secrets.token_bytes(secret_bytes))}
    if alg is not None:
        member["alg"] = alg
    config = JwtProviderConfig(name="p", issuer=ISSUER, audiences=("a",), algorithms=allowed)
    keys, out = parse_key_set({"keys": [member]}, requirements=KeyRequirements.for_provider(config))
    if refused:
        assert keys == [] and len(out) == 1
        assert f"HMAC secret of {secret_bytes} bytes is shorter" in out[0].reason
    else:
        assert [k.kid for k in keys] == ["h"] and out == []


async def test_short_hmac_secret_does_not_verify_its_tokens(
    make: MakeProvider, good: DevKey
) -> None:
    short = secrets.token_bytes(16)
    member = {"kty": "oct", "kid": "h", "alg": "HS256", "k": b64(short)}
    provider = await make([good.public_jwk(), member], algorithms=("ES256", "HS256"))
    claims = {"iss": ISSUER, "sub": "alice", "aud": "api", "iat": int(T0), "exp": int(T0) + 60}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        tok = jwt.encode(claims, short, algorithm="HS256", headers={"kid": "h"})
    # With no HMAC key left, an HS256 token is the key-confusion case: refused early.
    assert await deny_reason(provider, tok) == "token_algorithm_not_allowed"
    long = secrets.token_bytes(32)
    provider = await make(
        [good.public_jwk(), member, {"kty": "oct", "kid": "h2", "alg": "HS256", "k": b64(long)}],
        algorithms=("ES256", "HS256"),
    )
    assert await deny_reason(provider, tok) == "token_unknown_kid"
    ok = jwt.encode(claims, long, algorithm="HS256", headers={"kid": "h2"})
    assert await provider.authenticate(request(ok)) is not None


async def test_a_document_of_only_refused_keys_is_unusable(
    make: MakeProvider, good: DevKey, weak: dict[str, DevKey], caplog: pytest.LogCaptureFixture
) -> None:
    # At start: never ready, tokens fail closed (503), the refusal is still logged.
    with caplog.at_level(logging.WARNING, logger="authz.jwks"):
        provider = await make([jwk_of(weak["rsa512"])])
    assert not provider.ready()
    with pytest.raises(DependencyError) as err:
        await provider.authenticate(request(token(weak["rsa512"])))
    assert err.value.reason == "jwks_unavailable"
    assert len(refusals(caplog, weak["rsa512"].kid)) == 1
    # On a refresh: the previous keys stay, the weak one is not taken.
    provider = await make([good.public_jwk()])
    assert provider.jwks.config.jwks_file is not None
    path = Path(provider.jwks.config.jwks_file)
    path.write_text(json.dumps({"keys": [jwk_of(weak["rsa512"]), jwk_of(weak["e3"])]}))
    os.utime(path, ns=(1, 1))
    assert not await provider.jwks.refresh()
    assert [k.kid for k in provider.jwks.keys] == [good.kid] and provider.ready()
    assert await provider.authenticate(request(token(good))) is not None
    assert await deny_reason(provider, token(weak["e3"])) == "token_unknown_kid"


@pytest.mark.parametrize(
    ("value", "problem"),
    [(1024, "1024 is less than the minimum of 2048"), ("big", "'big' is not of type 'integer'")],
)
def test_min_rsa_bits_below_2048_is_a_located_policy_error(
    tmp_path: Path, value: Any, problem: str
) -> None:
    text = (
        "providers:\n  p:\n    type: jwt\n    issuer: https://i\n    audiences: [a]\n"
        f"    jwks_uri: https://i/k\n    min_rsa_bits: {value}\nroutes: []\n"
    )
    with pytest.raises(PolicyError) as err:
        load_policy_bytes(text.encode(), source="policy.yaml", base_dir=tmp_path)
    [(location, message)] = err.value.problems
    assert location == "policy.yaml:7:19"
    assert message.startswith("$.providers.p.min_rsa_bits:") and problem in message


def test_min_rsa_bits_is_loaded(tmp_path: Path) -> None:
    text = (
        "providers:\n  p: {type: jwt, issuer: 'https://i', audiences: [a],"
        " jwks_uri: 'https://i/k', min_rsa_bits: 3072}\nroutes: []\n"
    )
    config = load_policy_bytes(text.encode(), source="policy.yaml", base_dir=tmp_path)
    provider = config.provider("p")
    assert isinstance(provider, JwtProviderConfig) and provider.min_rsa_bits == 3072
