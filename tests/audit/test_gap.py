"""A full queue's refused records leave a ``gap`` line in the chain; verify lists it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from authz.audit.verify import verify_dir
from tests.audit.helpers import key_files
from tests.audit.test_audit_policy import _decide, _engine


def test_refused_records_become_a_gap_line_verify_reports(tmp_path: Path) -> None:
    # the writer is not started yet: nothing drains the queue of 3
    audit = "audit: {dir: t, signing_key: audit.pem, max_queue: 3, on_full: deny}\n"
    engine, policy = _engine(tmp_path, audit)

    async def run() -> list[tuple[int, str]]:
        got = await _decide(engine, 3)  # queued
        got += await _decide(engine, 2, "/nope")  # denies: refused, not kept
        got += await _decide(engine, 1)  # an allow that finds no room: denied
        await policy.shared.runtimes.start()  # room returns
        await asyncio.sleep(0.3)  # the writer drains the queue
        got += await _decide(engine, 1)
        await policy.shared.runtimes.aclose()
        return got

    got = asyncio.run(run())
    assert got == [(200, "allowed")] * 3 + [(404, "undeclared_route")] * 2 + [
        (503, "audit_unavailable"),
        (200, "allowed"),
    ]
    lines = [
        json.loads(line)
        for path in sorted((tmp_path / "t").iterdir())
        for line in path.read_text().splitlines()
    ]
    gaps = [e for e in lines if e["kind"] == "gap"]
    assert len(gaps) == 1
    (gap,) = gaps
    assert gap["refused"] == 3
    assert gap["reasons"] == {"undeclared_route": 2, "audit_unavailable": 1}
    assert gap["first"] <= gap["last"] <= gap["time"]
    kinds = [e["kind"] for e in lines]  # after the 3 queued records, before the next one
    assert kinds.index("gap") > 3 and kinds.index("gap") < len(kinds) - 2

    report = verify_dir(tmp_path / "t")
    assert report.problems == []  # not tampering
    assert [(g.refused, g.reasons) for g in report.gaps] == [(3, gap["reasons"])]
    assert report.records == 5  # 4 decisions and the gap: the checkpoints count it

    done = subprocess.run(
        [sys.executable, "-m", "authz", "audit", "verify", str(tmp_path / "t")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done
    assert ": gap: 3 records refused" in done.stdout
    assert "audit_unavailable 1, undeclared_route 2" in done.stdout
    assert "intact, with gaps" in done.stdout


def test_tampering_wins_over_gaps(tmp_path: Path) -> None:
    key_files(tmp_path)
    test_refused_records_become_a_gap_line_verify_reports(tmp_path)
    (path,) = (tmp_path / "t").iterdir()
    rows = path.read_bytes().split(b"\n")
    rows[2] = rows[2].replace(b'"allowed"', b'"allowed "')
    path.write_bytes(b"\n".join(rows))
    done = subprocess.run(
        [sys.executable, "-m", "authz", "audit", "verify", str(tmp_path / "t")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "edited" in done.stdout
