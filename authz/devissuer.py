"""A development OIDC issuer: keys, tokens and a tiny discovery/JWKS server.

For ``authz token``, the demo and the tests only. It signs whatever it is asked
to sign (including hostile tokens for tests) and serves keys over plain HTTP;
never point a production policy at it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
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


# -- command line -----------------------------------------------------------------


class _UsageError(Exception):
    """A bad argument: printed as one line, exit code 2."""


def _error(message: str) -> int:
    print(f"authz token: error: {message}", file=sys.stderr)
    return 2


def _load_key(path: str) -> DevKey:
    try:
        return load(path)
    except OSError as exc:
        raise _UsageError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def _parse_claim(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise _UsageError(f"bad --claim {text!r}: expected NAME=VALUE")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw  # not JSON: a plain string (tenant=acme)
    return name, value


def _cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    key_path, jwks_path = out / "key.pem", out / "jwks.json"
    if key_path.exists() and not args.force:
        return _error(f"{key_path} exists (use --force to replace it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        key = generate_key(args.alg)
        save(key, key_path)
        jwks_path.write_text(json.dumps(jwks([key]), indent=2) + "\n")
    except OSError as exc:
        return _error(f"cannot write to {out}: {exc.strerror or exc}")
    print(f"wrote {key_path} and {jwks_path} (alg {key.alg}, kid {key.kid})")
    return 0


def _cmd_mint(args: argparse.Namespace) -> int:
    if args.ttl <= 0:
        return _error(f"--ttl must be positive, got {args.ttl}")
    try:
        key = _load_key(args.key)
        claims = dict(_parse_claim(c) for c in args.claim)
    except _UsageError as exc:
        return _error(str(exc))
    audience = args.aud[0] if len(args.aud) == 1 else args.aud
    token = mint(
        key,
        issuer=args.issuer,
        subject=args.sub,
        audience=audience,
        scopes=args.scope,
        ttl=args.ttl,
        extra_claims=claims,
    )
    print(token)
    return 0


def _cmd_jwks(args: argparse.Namespace) -> int:
    try:
        keys = [_load_key(p) for p in args.key]
    except _UsageError as exc:
        return _error(str(exc))
    print(json.dumps(jwks(keys), indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        keys = [_load_key(p) for p in args.key]
    except _UsageError as exc:
        return _error(str(exc))
    server = DevIssuerServer(keys, host=args.host, port=args.port)
    try:
        server.start()
    except OSError as exc:
        reason = exc.strerror or exc
        print(
            f"authz token: error: cannot listen on {args.host}:{args.port}: {reason}",
            file=sys.stderr,
        )
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(server.url, flush=True)
        # wait() with a timeout so that signal handlers get a chance to run promptly.
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.stop()
    return 0


def _cmd_help(parser: argparse.ArgumentParser) -> Any:
    def show(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        return _error("choose a command: keygen, mint, serve, jwks")

    return show


def add_token_parser(
    subparsers: argparse._SubParsersAction[Any],
) -> argparse.ArgumentParser:
    """Add the ``token`` command (keygen, mint, serve, jwks) to a CLI's subparsers.

    Every leaf sets ``func``: a callable ``(args) -> int`` exit code.
    """
    token: argparse.ArgumentParser = subparsers.add_parser(
        "token", help="development tokens and issuer", description=__doc__.splitlines()[0]
    )
    token.set_defaults(func=_cmd_help(token))
    sub = token.add_subparsers(dest="token_command", metavar="COMMAND")

    p = sub.add_parser("keygen", help="write DIR/key.pem and DIR/jwks.json")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--alg", default="ES256", choices=ALGORITHMS)
    p.add_argument("--force", action="store_true", help="replace an existing key.pem")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("mint", help="print a signed token")
    p.add_argument("--key", required=True, metavar="PEM")
    p.add_argument("--issuer", required=True, metavar="URL")
    p.add_argument("--sub", required=True)
    p.add_argument("--aud", required=True, action="append", help="repeat for several")
    p.add_argument("--scope", default="", help='space-separated, e.g. "orders:read orders:write"')
    p.add_argument("--ttl", type=int, default=300, help="seconds (default 300)")
    p.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra claim; VALUE is JSON if it parses as JSON, else a string",
    )
    p.set_defaults(func=_cmd_mint)

    p = sub.add_parser("serve", help="serve discovery and JWKS until interrupted")
    p.add_argument("--key", required=True, action="append", metavar="PEM")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("jwks", help="print the public JWKS of one or more keys")
    p.add_argument("--key", required=True, action="append", metavar="PEM")
    p.set_defaults(func=_cmd_jwks)
    return token
