"""``authz audit verify``: an intact trail passes; each kind of tampering is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from authz.audit import chain as C
from tests.audit.helpers import config, lines, put, write_trail


def verify(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", "audit", "verify", str(directory), *extra],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture()
def trail(tmp_path: Path) -> Path:
    """12 records, a checkpoint every 4, one file: header + 12 + 3 + closing."""
    write_trail(config(tmp_path), 12)
    return tmp_path / "audit" / C.file_name("test", 0)


def kinds(path: Path) -> list[str]:
    return [json.loads(r)["kind"] for r in lines(path)]


def test_intact_trail_verifies_with_and_without_the_key(trail: Path, tmp_path: Path) -> None:
    assert kinds(trail) == ["file", *(["decision"] * 4 + ["checkpoint"]) * 3, "checkpoint"]
    for extra in ((), ("--key", str(tmp_path / "audit.pub"))):
        run = verify(trail.parent, *extra)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "1 chains, 1 files, 12 records, 4 checkpoints" in run.stdout
        assert "intact" in run.stdout


def test_records_hold_no_credential(trail: Path) -> None:
    text = trail.read_text()
    assert "SECRET" not in text and "eyJh.eyJw.sig" not in text
    first = json.loads(lines(trail)[1])
    assert first["query"] == "access_token=[redacted]&limit=5"
    assert len(first["token_digest"]) == 16
    assert first["identity"]["claims"] == {"tier": "gold"}  # the claims the policy reads
    assert (first["token_iat"], first["token_exp"]) == (10, 20)


def _problem(trail: Path) -> str:
    run = verify(trail.parent)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    return run.stdout.strip()


def test_edit_is_named(trail: Path) -> None:
    rows = lines(trail)
    rows[3] = rows[3].replace(b'"decision":"allow"', b'"decision":"deny"')
    put(trail, rows)
    assert (
        _problem(trail) == f"{trail.name}:4: edited: its hash is not the `prev` of the "
        "next line (seq 4)"
    )


def test_delete_is_named(trail: Path) -> None:
    rows = lines(trail)
    del rows[2]  # seq 2
    put(trail, rows)
    assert _problem(trail) == f"{trail.name}:3: deleted: seq 2 missing before this line"


def test_insert_is_named(trail: Path) -> None:
    rows = lines(trail)
    forged = json.loads(rows[2])
    forged["request_id"] = "req-forged"
    rows.insert(3, C.canonical(forged))  # a copy of seq 2, edited, after it
    put(trail, rows)
    assert _problem(trail).startswith(f"{trail.name}:4: inserted: seq 2 does not belong here")


def test_reorder_is_named(trail: Path) -> None:
    rows = lines(trail)
    rows[2], rows[3] = rows[3], rows[2]
    put(trail, rows)
    assert _problem(trail) == f"{trail.name}:4: reordered: seq 2 comes after seq 3 ({trail.name}:3)"


def test_truncate_is_named(trail: Path) -> None:
    rows = lines(trail)
    put(trail, rows[:-3])  # the last records and the closing checkpoint cut off
    assert _problem(trail).startswith(
        f"{trail.name}:{len(rows) - 3}: truncated: chain test ends here without its closing "
        f"checkpoint (the last checkpoint is {trail.name}:11)"
    )


def test_cut_mid_line_is_named(trail: Path) -> None:
    data = trail.read_bytes()
    trail.write_bytes(data[:-20])
    assert f"{trail.name}:{len(lines(trail)) + 1}: truncated: the last line is cut short" in (
        _problem(trail)
    )


def _rechain(rows: list[bytes], key: object) -> list[bytes]:
    """What a forger with write access but without the key does: fix every hash after
    the edit and sign the checkpoints again with a key of their own."""
    out: list[bytes] = []
    prev = C.GENESIS
    records = 0
    for seq, row in enumerate(rows):
        entry = json.loads(row)
        entry["seq"], entry["prev"] = seq, prev
        if entry["kind"] == "checkpoint":
            entry["records"] = records
            message = C.checkpoint_message(
                entry["chain"], seq, prev, entry["time"], records, entry["final"]
            )
            entry["sig"] = C.sign(key, message)  # type: ignore[arg-type]
        elif entry["kind"] != "file":
            records += 1
        line = C.canonical(entry)
        prev = C.line_hash(line)
        out.append(line)
    return out


def test_forged_checkpoint_is_named(trail: Path, tmp_path: Path) -> None:
    rows = lines(trail)
    rows[2] = rows[2].replace(b'"subject":"alice"', b'"subject":"mallory"')
    attacker = C.private_key(C.keygen()[0])
    put(trail, _rechain(rows, attacker))
    run = verify(trail.parent, "--key", str(tmp_path / "audit.pub"))
    assert run.returncode == 1
    assert run.stdout.strip() == (
        f"{trail.name}:6: forged: checkpoint signature does not verify against the key"
    )


def test_deleted_file_is_named(tmp_path: Path) -> None:
    write_trail(config(tmp_path, rotate_size=1500), 12, pause=0.03)
    directory = tmp_path / "audit"
    files = sorted(directory.iterdir())
    assert len(files) >= 3
    assert verify(directory).returncode == 0
    files[1].unlink()
    run = verify(directory)
    assert run.returncode == 1
    assert run.stdout.strip() == f"{files[1].name}: deleted: this file of the chain is missing"


def test_rotated_files_link_and_verify(tmp_path: Path) -> None:
    write_trail(config(tmp_path, rotate_size=1500), 30, pause=0.03)
    directory = tmp_path / "audit"
    files = sorted(directory.iterdir())
    assert len(files) >= 3
    for index, path in enumerate(files):
        header = json.loads(lines(path)[0])
        assert (header["kind"], header["chain"], header["file"]) == ("file", "test", index)
        if index:  # links to the last line of the file before
            assert header["prev"] == C.line_hash(lines(files[index - 1])[-1])
        assert json.loads(lines(path)[-1])["kind"] == "checkpoint"  # sealed before rotating
    run = verify(directory)
    assert run.returncode == 0, run.stdout
    assert "30 records" in run.stdout


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    run = verify(tmp_path / "nope")
    assert run.returncode == 2 and "not a directory" in run.stderr
    (tmp_path / "d").mkdir()
    run = verify(tmp_path / "d", "--key", str(tmp_path / "missing.pub"))
    assert run.returncode == 2 and "--key" in run.stderr and "Traceback" not in run.stderr
