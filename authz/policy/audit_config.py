"""Frozen, typed configuration of the audit trail: the policy's ``audit`` section.

Built by :mod:`authz.policy.audit_loader`; used by :mod:`authz.audit.writer`. A
policy without ``audit:`` writes no audit trail and its requests pay nothing for it.

```yaml
audit:
  dir: /var/lib/authz/audit     # relative paths: from the policy file's directory
  signing_key: audit-ed25519.pem   # Ed25519 private key (PKCS#8 PEM): `authz audit keygen`
  rotate: {size: 64MiB, age: 1h}   # a new file when either is reached
  checkpoint: {records: 1000, interval: 5s}   # a signed checkpoint every N records or T
  fsync: interval               # always (every batch) | interval (every fsync_interval_ms) | never
  fsync_interval_ms: 100
  on_full: backpressure         # backpressure: wait up to block_ms, then 503 audit_unavailable;
                                # deny: 503 audit_unavailable at once while full or failing
  block_ms: 200
  max_queue: 65536
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

FSYNC = ("always", "interval", "never")
ON_FULL = ("backpressure", "deny")


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """Where the audit trail is written, how it is sealed and what happens when it
    cannot keep up. ``dir`` and ``signing_key`` are absolute paths; ``key_pem`` is the
    signing key as read (and checked) at load."""

    dir: str
    signing_key: str
    key_pem: bytes = field(repr=False)
    rotate_size: int = 64 * 1024 * 1024  # bytes
    rotate_age: float = 3600.0  # seconds
    checkpoint_records: int = 1000
    checkpoint_interval: float = 5.0  # seconds
    fsync: str = "interval"  # one of FSYNC
    fsync_interval_ms: float = 100.0
    on_full: str = "backpressure"  # one of ON_FULL
    block_ms: float = 200.0
    max_queue: int = 65_536
    location: str = ""  # file:line of the section, for messages
