"""A policy as it is on disk right now: the bytes of every file, read once, hashed.

Reloads detect changes by content, not by (mtime, size): an edit that keeps both
(a same-length change with the mtime restored, ``cp -p``, ``rsync -t``, a tar
extraction) is still a change. Every file is read through the path the operator
gave, so a symlink swap (a Kubernetes ConfigMap's ``..data`` directory) is seen
as the new content it leads to, whatever the inodes.

:func:`load_snapshot` compiles exactly the bytes that were hashed: the loader reads
the documents the policy names (OpenAPI files) through the snapshot, never from
disk again, so a file that changes between the hash and the parse cannot be
half-loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from authz.errors import PolicyError
from authz.policy.config import PolicyConfig
from authz.policy.loader import load_policy_bytes


@dataclass(frozen=True, slots=True)
class FileRead:
    """One file's bytes, or why it could not be read."""

    path: str  # as the loader names it (not resolved: symlinks are followed on read)
    data: bytes | None
    error: str = ""  # the OSError's text when data is None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The policy file and the documents it named at the last load, read once."""

    policy: FileRead
    documents: tuple[FileRead, ...]
    digest: str  # sha256 over every path and its content

    @property
    def readable(self) -> bool:
        return self.policy.data is not None

    @property
    def document_paths(self) -> tuple[str, ...]:
        return tuple(d.path for d in self.documents)


def _read(path: str) -> FileRead:
    try:
        with open(path, "rb") as f:
            return FileRead(path, f.read())
    except OSError as exc:
        return FileRead(path, None, exc.strerror or str(exc))


def read_snapshot(policy: str, documents: tuple[str, ...] = ()) -> Snapshot:
    """Read the policy file and ``documents`` (paths the loader read last time)."""
    files = (_read(policy), *(_read(d) for d in documents))
    h = hashlib.sha256()
    for f in files:
        h.update(f.path.encode("utf-8", "surrogateescape") + b"\0")
        if f.data is None:
            h.update(b"-" + f.error.encode() + b"\0")
        else:
            h.update(b"+%d\0" % len(f.data) + f.data)
    return Snapshot(files[0], files[1:], "sha256:" + h.hexdigest())


@dataclass(frozen=True, slots=True)
class SnapshotLoad:
    """The outcome of compiling a snapshot."""

    config: PolicyConfig | None
    error: PolicyError | None
    #: The documents the loader asked for, in order. When they differ from the
    #: snapshot's, the policy names other files now: read a new snapshot with these
    #: (the files outside the snapshot were read from disk, unhashed, and the result
    #: must not be used).
    documents: tuple[str, ...]
    covered: bool  # every document the loader asked for was in the snapshot


def load_snapshot(snapshot: Snapshot) -> SnapshotLoad:
    """Check and compile the snapshot's bytes (never rereading the files in it)."""
    if snapshot.policy.data is None:
        unreadable = PolicyError(
            [(snapshot.policy.path, f"cannot read the policy file: {snapshot.policy.error}")]
        )
        return SnapshotLoad(None, unreadable, snapshot.document_paths, True)
    held = {d.path: d for d in snapshot.documents}
    asked: list[str] = []
    outside: list[str] = []

    def read(path: Path) -> bytes:
        key = str(path)
        asked.append(key)
        entry = held.get(key)
        if entry is None:
            outside.append(key)
            entry = _read(key)
        if entry.data is None:
            raise OSError(0, entry.error)
        return entry.data

    source = Path(snapshot.policy.path)
    config: PolicyConfig | None = None
    error: PolicyError | None = None
    try:
        config = load_policy_bytes(
            snapshot.policy.data, source=str(source), base_dir=source.parent, read=read
        )
    except PolicyError as exc:
        error = exc
    return SnapshotLoad(config, error, tuple(asked), not outside)
