"""TLS on the service's own listeners (gRPC, HTTP, the control plane), reloaded when
its files change.

A :class:`CertificateReloader` owns the files (certificate chain, private key and,
optionally, the CA bundle client certificates must chain to: mTLS between Envoy and
authz). It looks at their stamps (inode, size, mtime) at most every ``interval``
seconds, when a new connection asks, and rereads them only when a stamp changed; a
file that cannot be read or a pair that does not match keeps the previous
certificate (logged once per change) rather than breaking the listener.

- gRPC (the ext_authz and control-plane servers): :meth:`grpc_credentials`, a
  ``grpc.dynamic_ssl_server_credentials`` whose certificate-config fetcher gRPC calls
  on each new handshake;
- HTTP: :meth:`listener_context`, whose handshake callback gives each new connection
  :meth:`ssl_context`, so a new certificate or CA applies to the next connection and a
  CA removed from the bundle is no longer trusted.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Seconds a TLS handshake on the HTTP transport may take.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds between looks at the files' stamps (a connection in between reuses the last).
CHECK_INTERVAL = 1.0


class TlsConfigError(ValueError):
    """A TLS file cannot be used at start (at reload the old certificate is kept)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The files of one TLS listener (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``)."""

    cert: str
    key: str
    #: With a bundle, a client certificate that chains to it is required (mTLS).
    client_ca: str | None = None

    def paths(self) -> tuple[str, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


Stamp = tuple[tuple[int, int, int] | None, ...]


def _stamp(paths: tuple[str, ...]) -> Stamp:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Loaded:
    """One consistent read of the files, checked by building an SSLContext from them."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    context: ssl.SSLContext


def load(files: TlsFiles) -> Loaded:
    """Read and check ``files`` (raises TlsConfigError naming the file)."""

    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise TlsConfigError(f"{what} {path}: {exc.strerror or exc}") from None

    cert = read(files.cert, "TLS certificate")
    key = read(files.key, "TLS key")
    ca = read(files.client_ca, "TLS client CA") if files.client_ca else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"TLS certificate {files.cert} / key {files.key}: {exc}") from None
    if ca is not None:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise TlsConfigError(f"TLS client CA {files.client_ca}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return Loaded(cert, key, ca, context)


class CertificateReloader:
    """The current certificate of one listener, reread when its files change."""

    def __init__(
        self,
        files: TlsFiles,
        *,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files = files
        self._paths = files.paths()
        self._interval = interval
        self._clock = clock
        self._stamp = _stamp(self._paths)
        self.loaded = load(files)  # a start with unusable files fails here
        self._checked = clock()
        self._failed: Stamp | None = None
        self._lock = threading.Lock()  # gRPC calls the fetcher from its own threads
        #: how many times new files were taken (for tests and health)
        self.reloads = 0

    def refresh(self) -> bool:
        """Reread the files if their stamps changed (at most every ``interval``);
        True when a new certificate was taken."""
        now = self._clock()
        if now - self._checked < self._interval:
            return False
        with self._lock:
            self._checked = now
            stamp = _stamp(self._paths)
            if stamp == self._stamp or stamp == self._failed:
                return False
            try:
                loaded = load(self.files)
            except TlsConfigError as exc:
                self._failed = stamp
                log.warning("TLS files changed but cannot be used (keeping the old): %s", exc)
                return False
            self._stamp, self._failed, self.loaded = stamp, None, loaded
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self.files.cert)
            return True

    def ssl_context(self) -> ssl.SSLContext:
        """The context for a new connection (after :meth:`refresh`)."""
        self.refresh()
        return self.loaded.context

    def listener_context(self) -> ssl.SSLContext:
        """The context an asyncio server listens with: on each handshake (its
        ``sni_callback``, which OpenSSL calls with or without SNI) the connection takes
        :meth:`ssl_context`, so new files apply to the next connection."""
        base = load(self.files).context

        def pick(connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
            try:
                connection.context = self.ssl_context()
            except Exception:  # never break a handshake over a reload
                log.exception("TLS reload failed")

        base.sni_callback = pick  # type: ignore[assignment]
        return base

    def _grpc_config(self) -> Any:
        import grpc

        loaded = self.loaded
        return grpc.ssl_server_certificate_configuration(
            [(loaded.key, loaded.cert)], root_certificates=loaded.client_ca
        )

    def grpc_credentials(self) -> Any:
        """Server credentials whose certificate follows the files (gRPC asks per handshake)."""
        import grpc

        def fetch() -> Any:
            try:
                return self._grpc_config() if self.refresh() else None
            except Exception:  # never break a handshake over a reload
                log.exception("TLS reload failed")
                return None

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(),
            fetch,
            require_client_authentication=self.files.client_ca is not None,
        )
