"""The ``audit`` section of a policy file -> :class:`~authz.policy.audit_config.AuditConfig`.

Called by :mod:`authz.policy.loader` after the JSON Schema check (unknown fields,
wrong types, enums); this reports, each at its location, what the schema cannot say:
a signing key that cannot be read or is not an Ed25519 private key, a directory that
is a file, sizes and durations that must be more than zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from authz.policy.audit_config import AuditConfig
from authz.policy.document import JsonPath, parse_duration

SECTION = "audit"
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 10**6}


class Reporter(Protocol):
    def problem(self, jpath: JsonPath, message: str) -> None: ...

    def where(self, jpath: JsonPath, *, key: bool = False) -> str: ...


def parse_size(value: int | str) -> int:
    """Bytes from ``1048576`` or ``"64MiB"``/``"10MB"``/``"512KiB"``; raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :].strip()
    if not digits.strip().isdigit() or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r} (e.g. 65536, 512KiB, 64MiB)")
    return int(digits) * _SIZE_UNITS[unit]


def read_signing_key(path: Path) -> bytes:
    """The PEM of an Ed25519 private key at ``path``; ValueError saying what is wrong."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 key (`authz audit keygen` makes one)")
    return pem


def load_audit(doc: dict[str, Any], reporter: Reporter, base_dir: Path) -> AuditConfig | None:
    """The section, or None when the policy has none."""
    spec = doc.get(SECTION)
    if not isinstance(spec, dict):
        return None
    defaults = AuditConfig(dir="", signing_key="", key_pem=b"")

    def resolve(value: Any) -> Path:
        path = Path(str(value))
        return path if path.is_absolute() else base_dir / path

    directory = resolve(spec.get("dir", ""))
    if directory.exists() and not directory.is_dir():
        reporter.problem((SECTION, "dir"), f"{directory} exists and is not a directory")
    key_path = resolve(spec.get("signing_key", ""))
    pem = b""
    try:
        pem = read_signing_key(key_path)
    except ValueError as exc:
        reporter.problem((SECTION, "signing_key"), str(exc))

    def positive(path: tuple[str, ...], default: float, parse: Any) -> Any:
        node: Any = spec
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return default
        at: JsonPath = (SECTION, *path)
        try:
            value = parse(node)
        except ValueError as exc:
            reporter.problem(at, str(exc))
            return default
        if value <= 0:
            reporter.problem(at, "must be more than zero")
            return default
        return value

    return AuditConfig(
        dir=str(directory.resolve()),
        signing_key=str(key_path.resolve()),
        key_pem=pem,
        rotate_size=positive(("rotate", "size"), defaults.rotate_size, parse_size),
        rotate_age=positive(("rotate", "age"), defaults.rotate_age, parse_duration),
        checkpoint_records=int(spec.get("checkpoint", {}).get("records", 1000)),
        checkpoint_interval=positive(
            ("checkpoint", "interval"), defaults.checkpoint_interval, parse_duration
        ),
        fsync=str(spec.get("fsync", defaults.fsync)),
        fsync_interval_ms=float(spec.get("fsync_interval_ms", defaults.fsync_interval_ms)),
        on_full=str(spec.get("on_full", defaults.on_full)),
        block_ms=float(spec.get("block_ms", defaults.block_ms)),
        max_queue=int(spec.get("max_queue", defaults.max_queue)),
        location=reporter.where((SECTION,)),
    )
