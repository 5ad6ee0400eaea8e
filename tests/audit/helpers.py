"""Audit trails written by the real writer, for the audit tests."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from authz.audit import chain as C
from authz.audit.entry import AuditView
from authz.audit.writer import AuditGate, AuditWriter
from authz.model import Identity, Request
from authz.policy.audit_config import AuditConfig
from authz.record import DecisionRecord

VIEW = AuditView({"issuer": ("authorization", True)}, ("tier",))


def key_files(tmp: Path) -> tuple[Path, Path]:
    private, public = C.keygen()
    (tmp / "audit.pem").write_bytes(private)
    (tmp / "audit.pub").write_bytes(public)
    return tmp / "audit.pem", tmp / "audit.pub"


def config(tmp: Path, **overrides: Any) -> AuditConfig:
    key = tmp / "audit.pem"
    if not key.exists():
        key_files(tmp)
    base = AuditConfig(
        dir=str(tmp / "audit"), signing_key=str(key), key_pem=key.read_bytes(),
        checkpoint_records=4, fsync="never",
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


def decision(i: int, *, allowed: bool = True) -> DecisionRecord:
    request = Request(
        "GET", f"/v1/orders/{i}?access_token=SECRET&limit=5", host="api.local",
        headers={"authorization": "Bearer eyJh.eyJw.sig", "content-type": "application/json"},
        request_id=f"req-{i}",
    )  # fmt: skip
    identity = Identity(
        "jwt", "alice", provider="issuer", issuer="https://issuer",
        scopes=frozenset({"orders:read"}), claims={"tier": "gold", "iat": 10, "exp": 20},
    )  # fmt: skip
    return DecisionRecord(
        time.time(), f"req-{i}", f"dec-{i}", "get-order", "GET", f"/v1/orders/{i}", "jwt",
        "alice", "https://issuer", "allow" if allowed else "deny", 200 if allowed else 403,
        "allowed" if allowed else "insufficient_scope", "sha256:1", 0.1,
        request=request, identity=identity,
    )  # fmt: skip


def write_trail(
    cfg: AuditConfig, n: int, *, chain: str = "test", pause: float = 0.0
) -> AuditWriter:
    async def run() -> AuditWriter:
        writer = AuditWriter(cfg, chain=chain, interval=0.01)
        await writer.start()
        gate = AuditGate(writer, VIEW, cfg)
        for i in range(n):
            assert gate.ready()
            gate.on_decision(decision(i))
            if pause:  # let the writer take each one: rotation happens between batches
                await asyncio.sleep(pause)
        await writer.aclose()
        return writer

    return asyncio.run(run())


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def put(path: Path, rows: list[bytes]) -> None:
    path.write_bytes(b"".join(r + b"\n" for r in rows))
