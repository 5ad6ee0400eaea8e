"""Reaching the control plane from the command line: a channel with credentials.

Credentials, in order: a client certificate (``--tls-cert/--tls-key``, mTLS), a
bearer token (``--token-file``), else, for a loopback address, the token a service
on that port wrote to the runtime directory (:func:`authz.control.auth.local_token_path`).
``--ca`` (or a client certificate) makes the channel TLS.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from authz.control import auth
from authz.transport.envoy_http import is_loopback, read_secret_file
from authz.units import parse_host_port
from authz.v1 import admin_pb2_grpc


class ClientConfigError(ValueError):
    """The client flags cannot make a connection (the command exits 2)."""


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ClientConfigError(f"{flag} {path}: {exc.strerror or exc}") from None


def credentials(
    address: str,
    *,
    token_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    ca: str | None = None,
) -> tuple[Any, tuple[tuple[str, str], ...]]:
    """(channel credentials or None for plaintext, call metadata)."""
    if (tls_cert is None) != (tls_key is None):
        raise ClientConfigError("--tls-cert and --tls-key go together")
    channel = None
    if tls_cert is not None or ca is not None:
        channel = grpc.ssl_channel_credentials(
            root_certificates=_read(ca, "--ca") if ca else None,
            private_key=_read(tls_key, "--tls-key") if tls_key else None,
            certificate_chain=_read(tls_cert, "--tls-cert") if tls_cert else None,
        )
    path = token_file
    if path is None and tls_cert is None:
        hp = parse_host_port(address)
        if is_loopback(hp.host):
            default = auth.local_token_path(hp.port)
            path = str(default) if default.exists() else None
    metadata: tuple[tuple[str, str], ...] = ()
    if path is not None:
        try:
            token = read_secret_file(path)
        except ValueError as exc:
            raise ClientConfigError(f"--token-file {exc}") from None
        metadata = ((auth.AUTHORIZATION, f"Bearer {token}"),)
    return channel, metadata


class Admin:
    """An ``authz.v1.Admin`` stub whose calls carry the credentials' metadata."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...], timeout: float) -> None:
        self._stub = stub
        self._metadata = metadata
        self._timeout = timeout

    def call(self, method: str, request: Any) -> Any:
        return getattr(self._stub, method)(
            request, timeout=self._timeout, metadata=self._metadata or None
        )


@contextmanager
def connect(
    address: str,
    *,
    timeout: float = 5.0,
    token_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    ca: str | None = None,
) -> Iterator[Admin]:
    """An :class:`Admin` on ``address`` (raises ClientConfigError for bad flags)."""
    creds, metadata = credentials(
        address, token_file=token_file, tls_cert=tls_cert, tls_key=tls_key, ca=ca
    )
    channel = (
        grpc.secure_channel(address, creds) if creds is not None else grpc.insecure_channel(address)
    )
    with channel:
        yield Admin(admin_pb2_grpc.AdminStub(channel), metadata, timeout)  # type: ignore[no-untyped-call]
