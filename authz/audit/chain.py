"""The audit trail's format: canonical lines, the hash chain and signed checkpoints.

Shared by the writer (:mod:`authz.audit.writer`) and ``authz audit verify``
(:mod:`authz.audit.verify`), so that both agree on every byte.

- Every line is one JSON object in canonical form (sorted keys, no spaces, ASCII):
  :func:`canonical`. Each carries ``seq`` (0, 1, 2, ... within its chain) and ``prev``,
  the SHA-256 of the previous line's bytes (:func:`line_hash`; :data:`GENESIS` for the
  first line of a chain). One chain per writer (per worker process and start).
- ``kind`` says what a line is: ``file`` (the first line of every file: the chain's
  name, the file's index, the signing key's public half), ``decision``, ``control``
  (a control-plane call) or ``checkpoint``.
- A checkpoint signs (Ed25519) :func:`checkpoint_message`: the chain, its ``seq``, the
  hash of the line before it (the chain's head), the time, the number of records so
  far and whether it is the writer's closing one. Records after the last checkpoint
  are unsealed; a chain that does not end with a ``final`` checkpoint was cut short
  (or its writer died).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = 1
GENESIS = "0" * 64
#: audit-<chain>-<index>.jsonl
PREFIX, SUFFIX = "audit-", ".jsonl"

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str
)


def canonical(entry: dict[str, Any]) -> bytes:
    """The one byte form of ``entry`` (no newline)."""
    return _ENCODER.encode(entry).encode("ascii")


def line_hash(line: bytes) -> str:
    """The hash the next line's ``prev`` names: SHA-256 of the line, hex."""
    return hashlib.sha256(line).hexdigest()


def file_name(chain: str, index: int) -> str:
    return f"{PREFIX}{chain}-{index:06d}{SUFFIX}"


def checkpoint_message(
    chain: str, seq: int, head: str, time: float, records: int, final: bool
) -> bytes:
    return canonical(
        {"chain": chain, "final": final, "head": head, "records": records, "seq": seq,
         "time": time}
    )  # fmt: skip


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """16 hex digits naming a public key."""
    return hashlib.sha256(public_bytes(key)).hexdigest()[:16]


def private_key(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def public_key_from_pem(pem: bytes) -> Ed25519PublicKey:
    """A public key from a PEM public key, or the public half of a PEM private key."""
    if b"PRIVATE KEY" in pem:
        return private_key(pem).public_key()
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text))


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode("ascii")


def signature_ok(key: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def keygen() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair: (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public
