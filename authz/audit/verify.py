"""``authz audit verify``: check an audit directory's chains and checkpoints.

For each chain (files ``audit-<chain>-<index>.jsonl``, in index order) every line is
checked in turn against what the one before promises (:mod:`authz.audit.chain`):
its ``seq`` is the next number and its ``prev`` is the hash of the previous line.
The first line that breaks that is named, with what most likely happened:

- **edited**: the seq is right but ``prev`` does not match: the line before it was
  changed (a line that is not JSON, or not a whole line, is named itself);
- **deleted**: seqs are missing and do not appear later (a missing file, too);
- **inserted**: a line whose seq repeats one already seen, or after which the chain
  goes on as if it were not there;
- **reordered**: the missing seq appears later in the chain;
- **truncated**: the chain does not end with its writer's closing (``final``)
  checkpoint: its tail was cut off (or the writer died; records after the last
  checkpoint are unsealed);
- **gap** (not tampering): a ``gap`` line the writer wrote itself, saying how many
  records it refused (queue full, writes failing), when and for what reasons
  (:mod:`authz.audit.gap`). The chain is intact; the gaps are listed in
  :attr:`Report.gaps` apart from the problems.
- **forged checkpoint**: a checkpoint whose Ed25519 signature does not verify
  against the key (``--key PUB``; without it, the key in the chain's first file,
  which proves only that the chain is self-consistent).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz.audit import chain as C

_NAME = re.compile(rf"{re.escape(C.PREFIX)}(?P<chain>.+)-(?P<index>\d{{6}}){re.escape(C.SUFFIX)}")


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # edited | deleted | inserted | reordered | truncated | forged | unreadable
    file: str
    line: int  # 1-based; 0: the file as a whole
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.kind}: {self.message}"


@dataclass(slots=True)
class Entry:
    file: str
    line: int
    seq: int
    prev: str
    hash: str
    value: dict[str, Any]


@dataclass(slots=True)
class Report:
    chains: int = 0
    files: int = 0
    records: int = 0
    checkpoints: int = 0
    problems: list[Problem] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    #: the writer's own ``gap`` lines (records it refused, :mod:`authz.audit.gap`)
    gaps: list[Gap] = field(default_factory=list)

    @property
    def refused(self) -> int:
        return sum(g.refused for g in self.gaps)


@dataclass(frozen=True, slots=True)
class Gap:
    """A gap line: the chain is intact, but says that it lacks ``refused`` records."""

    file: str
    line: int
    refused: int
    first_at: str
    last_at: str
    reasons: dict[str, int]

    def __str__(self) -> str:
        reasons = ", ".join(f"{r or '?'} {n}" for r, n in sorted(self.reasons.items()))
        return (
            f"{self.file}:{self.line}: gap: {self.refused} records refused (queue full or "
            f"writes failing) from {self.first_at} to {self.last_at}: {reasons}"
        )


def chain_files(directory: Path) -> dict[str, list[tuple[int, Path]]]:
    """chain name -> its files (index, path) in index order."""
    chains: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(directory.iterdir()):
        match = _NAME.fullmatch(path.name)
        if match is not None and path.is_file():
            chains.setdefault(match["chain"], []).append((int(match["index"]), path))
    for files in chains.values():
        files.sort()
    return chains


def read_entries(files: list[tuple[int, Path]]) -> Iterator[Entry | Problem]:
    """The chain's lines in order, or the Problem that stops reading them."""
    for expected_index, (index, path) in enumerate(files):
        if index != expected_index:
            missing = C.file_name(_chain_of(path), expected_index)
            yield Problem("deleted", missing, 0, "this file of the chain is missing")
            return
        data = path.read_bytes()
        lines = data.split(b"\n")
        if lines[-1]:
            yield Problem("truncated", path.name, len(lines), "the last line is cut short")
            return
        for number, line in enumerate(lines[:-1], 1):
            try:
                value = json.loads(line)
                seq, prev = value["seq"], value["prev"]
                if not isinstance(seq, int) or not isinstance(prev, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                yield Problem("edited", path.name, number, "not a valid audit line")
                return
            yield Entry(path.name, number, seq, prev, C.line_hash(line), value)


def _chain_of(path: Path) -> str:
    match = _NAME.fullmatch(path.name)
    return match["chain"] if match is not None else ""


def verify_chain(
    name: str, files: list[tuple[int, Path]], key: Any, report: Report
) -> Problem | None:
    """The first problem of one chain, or None (counts go into ``report``)."""
    entries: list[Entry] = []
    for item in read_entries(files):
        if isinstance(item, Problem):
            # lines before the unreadable one are still checked first
            return _walk(name, entries, key, report) or item
        entries.append(item)
    return _walk(name, entries, key, report, complete=True)


def _walk(
    name: str, entries: list[Entry], key: Any, report: Report, *, complete: bool = False
) -> Problem | None:
    positions: dict[int, list[int]] = {}
    for i, e in enumerate(entries):
        positions.setdefault(e.seq, []).append(i)
    exp_seq, exp_prev = 0, C.GENESIS
    seen: set[int] = set()
    public = key
    last_checkpoint: Entry | None = None
    records = 0
    for i, e in enumerate(entries):
        nxt = entries[i + 1] if i + 1 < len(entries) else None
        if e.seq != exp_seq or e.prev != exp_prev:
            if e.seq == exp_seq:
                before = entries[i - 1] if i else e
                return Problem(
                    "edited", before.file, before.line,
                    f"its hash is not the `prev` of the next line (seq {e.seq})",
                )  # fmt: skip
            inserted = Problem(
                "inserted", e.file, e.line,
                f"seq {e.seq} does not belong here (expected seq {exp_seq})",
            )  # fmt: skip
            if e.seq in seen or len(positions[e.seq]) > 1:
                return inserted
            later = [j for j in positions.get(exp_seq, ()) if j > i]
            if later:
                moved = entries[later[0]]
                return Problem(
                    "reordered", moved.file, moved.line,
                    f"seq {exp_seq} comes after seq {e.seq} ({e.file}:{e.line})",
                )  # fmt: skip
            if nxt is not None and (nxt.seq, nxt.prev) == (exp_seq, exp_prev):
                return inserted
            if e.seq > exp_seq:
                span = f"seq {exp_seq}" + (f"-{e.seq - 1}" if e.seq - 1 > exp_seq else "")
                return Problem("deleted", e.file, e.line, f"{span} missing before this line")
            return Problem("reordered", e.file, e.line, f"seq {e.seq} is out of order")
        seen.add(e.seq)
        kind = e.value.get("kind")
        first_of_file = i == 0 or entries[i - 1].file != e.file
        if first_of_file != (kind == "file"):
            return Problem(
                "edited" if first_of_file else "inserted", e.file, e.line,
                "a file's first line must be its header, and only it",
            )  # fmt: skip
        if kind == "file":
            report.files += 1
            if e.value.get("chain") != name:
                return Problem("edited", e.file, e.line, f"the header names chain "
                               f"{e.value.get('chain')!r}, not {name!r}")  # fmt: skip
            if public is None:
                try:
                    public = C.public_key_from_b64(str(e.value.get("public_key", "")))
                except ValueError:
                    return Problem("edited", e.file, e.line, "the header's key is not valid")
        elif kind == "checkpoint":
            problem = _checkpoint(name, e, public, records)
            if problem is not None:
                return problem
            report.checkpoints += 1
            report.keys.add(str(e.value.get("key_id")))
            last_checkpoint = e
        else:
            records += 1
            if kind == "gap":
                report.gaps.append(_gap(e))
        exp_seq, exp_prev = e.seq + 1, e.hash
    report.records += records
    if not complete:
        return None
    if not entries:
        return None
    last = entries[-1]
    if last.value.get("kind") != "checkpoint" or not last.value.get("final"):
        sealed = (
            f"the last checkpoint is {last_checkpoint.file}:{last_checkpoint.line}"
            if last_checkpoint is not None
            else "it has no checkpoint"
        )
        return Problem(
            "truncated", last.file, last.line,
            f"chain {name} ends here without its closing checkpoint ({sealed}): its tail "
            "was cut off, or its writer did not close (crash, or still writing)",
        )  # fmt: skip
    return None


def _gap(e: Entry) -> Gap:
    v = e.value
    reasons = v.get("reasons")
    refused = v.get("refused")
    return Gap(
        e.file, e.line, refused if isinstance(refused, int) else 0, str(v.get("first_at", "")),
        str(v.get("last_at", "")),
        {str(k): n for k, n in reasons.items() if isinstance(n, int)}
        if isinstance(reasons, dict) else {},
    )  # fmt: skip


def _checkpoint(name: str, e: Entry, public: Any, records: int) -> Problem | None:
    v = e.value
    try:
        message = C.checkpoint_message(
            str(v["chain"]), e.seq, e.prev, float(v["time"]), int(v["records"]), bool(v["final"])
        )
        signature = str(v["sig"])
    except (KeyError, TypeError, ValueError):
        return Problem("forged", e.file, e.line, "checkpoint fields missing")
    if v["chain"] != name or public is None or not C.signature_ok(public, message, signature):
        return Problem(
            "forged", e.file, e.line,
            "checkpoint signature does not verify against the key",
        )  # fmt: skip
    if int(v["records"]) != records:
        return Problem(
            "edited", e.file, e.line,
            f"checkpoint counts {v['records']} records, the chain has {records}",
        )  # fmt: skip
    return None


def verify_dir(directory: Path, key: Any = None) -> Report:
    """Every chain in ``directory``; ``key``: an Ed25519 public key, or None."""
    report = Report()
    for name, files in chain_files(directory).items():
        report.chains += 1
        problem = verify_chain(name, files, key, report)
        if problem is not None:
            report.problems.append(problem)
    return report
