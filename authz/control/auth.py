"""Who may call the control plane, and who they are.

Two credentials, either or both:

- **mTLS**: with ``--control-client-ca`` the TLS handshake requires a client
  certificate that CA signed (a certificate from another CA never gets a
  connection). The caller is the certificate's first URI SAN (a SPIFFE ID) or,
  without one, its subject common name.
- **Bearer token**: with ``--control-token-file`` every call carries
  ``authorization: Bearer TOKEN``; compared in constant time
  (:func:`hmac.compare_digest`). The file is re-read when its size or mtime
  changes, so a token rotates without a restart. The caller is
  ``token:<first 8 hex of sha256(token)>`` (which token, never the token).

On a loopback address with neither configured, the service makes a token of its
own (:func:`ensure_local_token`): 32 random bytes, hex, written 0600 to
``control-PORT.token`` in :func:`runtime_dir` (``$AUTHZ_RUNTIME_DIR``, else
``$XDG_RUNTIME_DIR/authz``, else ``/tmp/authz-UID``; 0700, owned by this user) and
removed at shutdown. The CLI reads it from there by default, so on one machine
``authz inventory`` just works for the same user, while other local users (and any
process that can reach a loopback port, e.g. a browser tricked into a request)
cannot call it. Any other address without a credential is refused at start.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from authz.transport.envoy_http import read_secret_file

#: Metadata key of the bearer token (gRPC lower-cases it).
AUTHORIZATION = "authorization"
#: Who makes the control-plane call being served (set by the server's gate for the
#: servicer: "token:1a2b3c4d", a certificate's identity, or "worker-socket").
CALLER: ContextVar[str] = ContextVar("authz_control_caller", default="")
#: The caller of a worker's socket: the supervisor, which says who called it.
WORKER_SOCKET = "worker-socket"
#: the metadata key by which the supervisor tells a worker whom it authenticated (for the
#: worker's audit record of the call; the worker trusts it: only the supervisor connects)
CALLER_METADATA = "x-authz-caller"


def caller_metadata() -> tuple[tuple[str, str], ...]:
    """The metadata of a fan-out call to a worker: the caller being served."""
    caller = CALLER.get()
    return ((CALLER_METADATA, caller),) if caller else ()


def runtime_dir(*, create: bool = False) -> Path:
    """The directory for the service's local secrets and sockets (see the module doc).

    With ``create``, make it 0700 if missing; raise ValueError if it is not a
    directory of this user's that only this user can enter.
    """
    explicit = os.environ.get("AUTHZ_RUNTIME_DIR")
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "authz"
    else:
        path = Path(tempfile.gettempdir()) / f"authz-{os.getuid()}"
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=True)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ValueError(f"{path}: not a directory of this user's")
        if info.st_mode & 0o077:
            raise ValueError(f"{path}: other users can enter it; chmod 700 it")
    return path


def local_token_path(port: int) -> Path:
    """Where the token of a loopback control plane without credentials lives."""
    return runtime_dir() / f"control-{port}.token"


def ensure_local_token(port: int) -> Path:
    """Write a fresh random token for the control plane on ``port`` (0600, atomically)."""
    directory = runtime_dir(create=True)
    path = directory / f"control-{port}.token"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".token-")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


class TokenFile:
    """The bearer token in a file, re-read when the file changes (size, mtime, inode)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = b""
        self.current()  # ValueError now, at start, if the file is unusable

    def current(self) -> bytes:
        """The token (a file that went bad keeps the last good token, and says so once)."""
        try:
            info = os.stat(self.path)
        except OSError:
            if self._stamp is None:
                raise ValueError(f"{self.path}: cannot read it") from None
            return self._token
        stamp = (info.st_size, info.st_mtime_ns, info.st_ino)
        if stamp != self._stamp:
            try:
                self._token = read_secret_file(self.path).encode("ascii")
            except ValueError:
                if self._stamp is None:
                    raise
                return self._token  # mid-rewrite: keep the last good one
            self._stamp = stamp
        return self._token


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a control-plane call, or why nobody did."""

    identity: str  # "" when not authenticated
    problem: str = ""


ANONYMOUS = Caller("", "no credentials: send `authorization: Bearer TOKEN` or a client cert")


class Authenticator:
    """Decides whether a call is authenticated: a verified client certificate (when
    the server requires one) or the configured bearer token."""

    def __init__(self, *, token: TokenFile | None, mtls: bool) -> None:
        self._token = token
        self._mtls = mtls

    @property
    def configured(self) -> bool:
        return self._token is not None or self._mtls

    def authenticate(
        self,
        metadata: tuple[tuple[str, str | bytes], ...],
        auth_context: dict[str, list[bytes]],
    ) -> Caller:
        """The caller of one call, from its metadata and TLS auth context."""
        if self._mtls:
            identity = certificate_identity(auth_context)
            if identity:
                return Caller(identity)
        if self._token is not None:
            presented = [v for k, v in metadata if k == AUTHORIZATION]
            if presented:
                value = presented[0]
                raw = value.encode("latin-1") if isinstance(value, str) else value
                scheme, _, token = raw.partition(b" ")
                expected = self._token.current()
                if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), expected):
                    return Caller("token:" + hashlib.sha256(expected).hexdigest()[:8])
                return Caller("", "bearer token not accepted")
        return ANONYMOUS


def certificate_identity(auth_context: dict[str, list[bytes]]) -> str:
    """The verified peer certificate's URI SAN (SPIFFE ID) or common name, else ""."""
    for key in ("peer_spiffe_id", "x509_subject_alternative_name"):
        for value in auth_context.get(key, ()):
            text = value.decode("utf-8", "replace")
            if "://" in text:
                return text
    for key in ("x509_subject", "x509_common_name"):
        values = auth_context.get(key)
        if values:
            return values[0].decode("utf-8", "replace")
    return ""
