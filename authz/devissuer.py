"""A development OIDC issuer: keys, tokens and a tiny discovery/JWKS server.

For ``authz token``, the demo and the tests only. It signs whatever it is asked
to sign (including hostile tokens for tests) and serves keys over plain HTTP;
never point a production policy at it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

ALGORITHMS = ("ES256", "RS256", "EdDSA")

#: RFC 7638 3.2: the members of each key type that enter its thumbprint.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url-encoded."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _public_jwk(private_key: PrivateKey) -> dict[str, Any]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return OKPAlgorithm.to_jwk(private_key.public_key(), as_dict=True)


@dataclass(frozen=True, slots=True)
class DevKey:
    """A signing key of the dev issuer; ``kid`` is the RFC 7638 thumbprint."""

    private_key: PrivateKey
    alg: str
    kid: str

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with ``kid``, ``alg`` and ``use``."""
        jwk = _public_jwk(self.private_key)
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _dev_key(private_key: PrivateKey, alg: str) -> DevKey:
    return DevKey(private_key=private_key, alg=alg, kid=jwk_thumbprint(_public_jwk(private_key)))


def generate_key(alg: str = "ES256") -> DevKey:
    """A new signing key for ``alg`` (``ES256``, ``RS256`` or ``EdDSA``)."""
    private_key: PrivateKey
    if alg == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "RS256":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "EdDSA":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported algorithm {alg!r} (choose from {', '.join(ALGORITHMS)})")
    return _dev_key(private_key, alg)


def save(key: DevKey, path: str | os.PathLike[str]) -> None:
    """Write the private key as PEM, readable by the owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_pem())


def load(path: str | os.PathLike[str]) -> DevKey:
    """Read a PEM private key written by :func:`save` (the algorithm follows the key type).

    Raises :class:`OSError` if the file cannot be read and :class:`ValueError` if
    it is not a supported private key.
    """
    data = Path(path).read_bytes()
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if isinstance(private_key, rsa.RSAPrivateKey):
        return _dev_key(private_key, "RS256")
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
        private_key.curve, ec.SECP256R1
    ):
        return _dev_key(private_key, "ES256")
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return _dev_key(private_key, "EdDSA")
    raise ValueError(f"{path}: unsupported key type (need RSA, EC P-256 or Ed25519)")


def jwks(keys: Iterable[DevKey]) -> dict[str, Any]:
    """The public JWKS of ``keys`` (several keys allowed, for rotation)."""
    return {"keys": [k.public_jwk() for k in keys]}


def mint(
    key: DevKey,
    *,
    issuer: str,
    subject: str,
    audience: str | Sequence[str],
    scopes: str | Iterable[str] = (),
    ttl: float = 300,
    extra_claims: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A signed JWT with ``iss``, ``sub``, ``aud``, ``scope``, ``iat``, ``nbf``, ``exp``, ``jti``.

    ``extra_claims`` and ``headers`` are merged last, so they can override anything;
    a value of None removes that claim or header (tests use this to build tokens
    without ``exp`` or ``kid``).
    """
    issued = int(time.time() if now is None else now)
    scope = scopes if isinstance(scopes, str) else " ".join(scopes)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience if isinstance(audience, str) else list(audience),
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl),
        "jti": secrets.token_urlsafe(16),
    }
    if scope:
        claims["scope"] = scope
    for name, value in (extra_claims or {}).items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    header: dict[str, Any] = {"kid": key.kid}
    for name, value in (headers or {}).items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    return jwt.encode(claims, key.private_key, algorithm=key.alg, headers=header)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: DevIssuerServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.partition("?")[0]
        owner._count(path)
        if owner.unavailable:
            self._send(503, {"error": "temporarily_unavailable"}, {"Retry-After": "1"})
        elif path == "/.well-known/openid-configuration":
            self._send(200, owner.discovery_document())
        elif path == "/jwks.json":
            self._send(200, owner.jwks(), {"Cache-Control": "max-age=300"})
        else:
            self._send(404, {"error": "not_found"})

    def _send(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests and the demo would drown in access lines


class DevIssuerServer:
    """Serves ``/.well-known/openid-configuration`` and ``/jwks.json`` from a thread.

    Keys can be added and removed while it runs (rotation); setting
    :attr:`unavailable` makes every answer a 503 (an outage);
    :attr:`advertised_issuer` overrides the ``issuer`` of the discovery document
    (a mismatch). :attr:`hits` counts requests per path.
    """

    def __init__(
        self, keys: Iterable[DevKey] = (), *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.host = host
        self.port = port
        self.unavailable = False
        self.advertised_issuer: str | None = None
        self.hits: dict[str, int] = {}
        self._keys: dict[str, DevKey] = {k.kid: k for k in keys}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, which is also the issuer (``http://host:port``)."""
        if self._server is None:
            raise RuntimeError("DevIssuerServer is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return self.url + "/jwks.json"

    def start(self) -> DevIssuerServer:
        """Bind and serve in a background thread (port 0 picks a free port)."""
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> DevIssuerServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def add_key(self, key: DevKey) -> None:
        """Publish another key (takes effect on the next fetch)."""
        with self._lock:
            self._keys[key.kid] = key

    def remove_key(self, kid: str) -> None:
        """Stop publishing a key."""
        with self._lock:
            self._keys.pop(kid, None)

    @property
    def keys(self) -> list[DevKey]:
        with self._lock:
            return list(self._keys.values())

    def jwks(self) -> dict[str, Any]:
        """The JWKS currently served."""
        return jwks(self.keys)

    def discovery_document(self) -> dict[str, Any]:
        """The OIDC discovery document currently served."""
        algs = sorted({k.alg for k in self.keys}) or ["ES256"]
        return {
            "issuer": self.advertised_issuer or self.url,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": algs,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }

    def _count(self, path: str) -> None:
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1
