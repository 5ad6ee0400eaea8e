"""The policy's audit section (located errors) and the engine with an audit trail:
every decision recorded, fail closed with audit_unavailable, a full disk."""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.audit.verify import verify_dir
from authz.engine import CompiledPolicy, PolicyEngine
from authz.errors import PolicyError
from authz.model import Request
from authz.policy.loader import load_policy
from tests.audit.helpers import key_files

ROUTES = "routes:\n  - {name: ok, path: /ok, methods: [GET], public: true}\n"


def write(tmp_path: Path, audit: str, routes: str = ROUTES) -> Path:
    if not (tmp_path / "audit.pem").exists():
        key_files(tmp_path)
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(audit) + routes, encoding="utf-8")
    return path


def test_section_values(tmp_path: Path) -> None:
    text = """\
        audit:
          dir: trail
          signing_key: audit.pem
          rotate: {size: 512KiB, age: 10m}
          checkpoint: {records: 50, interval: 2s}
          fsync: always
          on_full: deny
          max_queue: 99
        """
    config = load_policy(write(tmp_path, text)).audit
    assert config is not None
    assert config.dir == str((tmp_path / "trail").resolve())
    assert (config.rotate_size, config.rotate_age) == (512 * 1024, 600.0)
    assert (config.checkpoint_records, config.checkpoint_interval) == (50, 2.0)
    assert (config.fsync, config.on_full, config.max_queue) == ("always", "deny", 99)
    assert "PRIVATE" not in repr(config)  # the key is not printed with the config


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{dir: a, signing_key: missing.pem}", "$.audit.signing_key: cannot read"),
        ("{dir: a, signing_key: policy.yaml}", "$.audit.signing_key:"),
        ("{dir: a, signing_key: audit.pem, fsync: sometimes}", "$.audit.fsync: must be one of"),
        ("{dir: a, signing_key: audit.pem, on_full: drop}", "$.audit.on_full: must be one of"),
        ("{dir: a, signing_key: audit.pem, rotate: {size: 0}}", "$.audit.rotate.size"),
        ("{dir: a, signing_key: audit.pem, rotate: {age: 0s}}", "$.audit.rotate.age: must be"),
        ("{dir: policy.yaml, signing_key: audit.pem}", "$.audit.dir: "),
        ("{signing_key: audit.pem}", "$.audit: 'dir' is a required property"),
    ],
)
def test_bad_values_are_located(tmp_path: Path, section: str, message: str) -> None:
    path = write(tmp_path, f"audit: {section}\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    (location, got), *_ = err.value.problems
    assert location.startswith(f"{path}:1:") and got.startswith(message), got


def test_a_public_key_is_not_a_signing_key(tmp_path: Path) -> None:
    path = write(tmp_path, "audit: {dir: a, signing_key: audit.pub}\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "is not an unencrypted PEM private key" in err.value.problems[0][1]


def _engine(tmp_path: Path, audit: str) -> tuple[PolicyEngine, CompiledPolicy]:
    policy = CompiledPolicy(load_policy(write(tmp_path, audit)))
    return PolicyEngine(policy), policy


async def _decide(engine: PolicyEngine, n: int, path: str = "/ok") -> list[tuple[int, str]]:
    out = []
    for i in range(n):
        d = await engine.check(Request("GET", path, host="h", request_id=f"r{i}"))
        out.append((d.status, d.reason))
    return out


def test_every_decision_and_its_chain(tmp_path: Path) -> None:
    engine, policy = _engine(tmp_path, "audit: {dir: trail, signing_key: audit.pem}\n")

    async def run() -> list[tuple[int, str]]:
        await policy.shared.runtimes.start()
        got = await _decide(engine, 5) + await _decide(engine, 2, "/nope")
        await policy.shared.runtimes.aclose()
        return got

    assert [s for s, _ in asyncio.run(run())] == [200] * 5 + [404] * 2
    report = verify_dir(tmp_path / "trail")
    assert (report.chains, report.records, report.problems) == (1, 7, [])
    (file,) = (tmp_path / "trail").iterdir()
    entries = [json.loads(line) for line in file.read_text().splitlines()]
    assert [e["reason"] for e in entries if e["kind"] == "decision"] == (
        ["allowed"] * 5 + ["undeclared_route"] * 2
    )
    assert entries[0]["chain"] in file.name  # the worker's chain names its files


@pytest.mark.parametrize("on_full", ["deny", "backpressure"])
def test_full_queue_fails_closed(tmp_path: Path, on_full: str) -> None:
    # the writer is not started: nothing drains the queue of 3
    audit = f"audit: {{dir: t, signing_key: audit.pem, max_queue: 3, on_full: {on_full}, "
    audit += "block_ms: 20}\n"
    engine, policy = _engine(tmp_path, audit)
    started = time.monotonic()
    got = asyncio.run(_decide(engine, 5))
    assert got == [(200, "allowed")] * 3 + [(503, "audit_unavailable")] * 2
    waited = time.monotonic() - started
    assert (waited >= 0.04) == (on_full == "backpressure")  # two bounded waits of 20 ms
    writer = policy.audit.writer
    assert int(writer._refused.value) == 2  # counted, never silently dropped
    metrics = policy.shared.metrics
    assert metrics.counter("authz_audit_refused_total", "").labels().value == 2  # type: ignore[attr-defined]


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs (root only; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("on_full", ["deny", "backpressure"])
def test_full_disk_gives_the_configured_behaviour(tiny_disk: Path, on_full: str) -> None:
    key_files(tiny_disk.parent)
    ballast = tiny_disk / "ballast"
    ballast.write_bytes(b"x" * 50 * 1024)  # the trail gets what is left: ~14 KiB
    audit = (
        f"audit: {{dir: {tiny_disk}/trail, signing_key: audit.pem, on_full: {on_full}, "
        "max_queue: 30, block_ms: 10, checkpoint: {records: 100000}}\n"
    )
    engine, policy = _engine(tiny_disk.parent, audit)
    writer = policy.audit.writer

    async def run() -> list[tuple[int, str]]:
        await policy.shared.runtimes.start()
        got: list[tuple[int, str]] = []
        for _ in range(100):
            got += await _decide(engine, 2)
            await asyncio.sleep(0.01)
        written.append(writer.stats().written)  # all before the disk filled
        ballast.unlink()  # room again: what is held gets written
        await asyncio.sleep(0.6)
        got += await _decide(engine, 3)
        await policy.shared.runtimes.aclose()
        return got

    written: list[int] = []
    got = asyncio.run(run())
    assert int(writer._write_failures.value) > 0  # ENOSPC, really
    full, recovered = got[:-3], got[-3:]
    first_503 = full.index((503, "audit_unavailable"))
    # fail closed once the disk is full, and stay closed while it is
    assert set(full[first_503:]) == {(503, "audit_unavailable")}
    allowed = sum(1 for s, _ in got if s == 200)
    if on_full == "deny":  # at once: only what was in flight when writes failed
        assert first_503 < written[0] + 30
    else:  # the queue absorbs its 30 records first, then each decision waits 10 ms
        assert first_503 >= written[0] + 30
    assert recovered == [(200, "allowed")] * 3  # recovered once there is room
    assert writer.stats().dropped == 0
    report = verify_dir(tiny_disk / "trail")
    assert report.problems == [], report.problems
    recorded = 0
    for path in (tiny_disk / "trail").iterdir():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            recorded += entry["kind"] == "decision" and entry["status"] == 200
    assert recorded == allowed  # every allowed decision is in the trail
