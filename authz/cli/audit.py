"""``authz audit verify DIR [--key PUB]`` and ``authz audit keygen``.

``verify`` checks every chain of an audit directory (:mod:`authz.audit.verify`) and
prints one line per broken chain naming the first bad line (file:line: kind:
message), one line per gap the writer recorded (records it refused: queue full or
writes failing), and a summary. Exit 0: intact, nothing missing; 1: a problem was
found (tampering or damage: it wins over gaps); 2: bad arguments (no such directory,
unreadable key); 3: intact, but the writer recorded gaps (records are missing by its
own account, not by tampering). ``keygen`` writes an Ed25519 key pair for the
policy's ``audit.signing_key`` (private, mode 0600) and for ``verify --key``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def cmd_verify(args: argparse.Namespace) -> int:
    from authz.audit import chain as C
    from authz.audit.verify import verify_dir

    directory = Path(args.dir)
    if not directory.is_dir():
        print(f"authz audit verify: {directory}: not a directory", file=sys.stderr)
        return 2
    key = None
    if args.key:
        try:
            key = C.public_key_from_pem(Path(args.key).read_bytes())
        except (OSError, ValueError) as exc:
            print(f"authz audit verify: --key {args.key}: {exc}", file=sys.stderr)
            return 2
    report = verify_dir(directory, key)
    for problem in report.problems:
        print(problem)
    if not report.chains:
        print(f"{directory}: no audit files", file=sys.stderr)
        return 1
    keyed = f"key {C.key_id(key)}" if key is not None else "the key in each chain's files"
    summary = (
        f"{directory}: {report.chains} chains, {report.files} files, {report.records} "
        f"records, {report.checkpoints} checkpoints (signatures checked against {keyed})"
    )
    for gap in report.gaps:
        print(gap)
    gaps = (
        f", {len(report.gaps)} gaps ({report.refused} records refused by the writer)"
        if report.gaps
        else ""
    )
    if report.problems:
        print(f"{summary}{gaps}: {len(report.problems)} broken", file=sys.stderr)
        return 1
    if report.gaps:
        print(f"{summary}{gaps}: intact, with gaps")
        return 3
    print(f"{summary}: intact")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from authz.audit.chain import keygen

    private, public = keygen()
    out = Path(args.out)
    pub = Path(args.public or f"{out}.pub")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
    try:
        fd = os.open(out, flags, 0o600)
        os.fchmod(fd, 0o600)
    except OSError as exc:
        print(f"authz audit keygen: {out}: {exc.strerror}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    pub.write_bytes(public)
    print(f"wrote {out} (private, for audit.signing_key) and {pub} (for verify --key)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="verify the audit trail; make its signing key")
    commands = p.add_subparsers(dest="audit_command", metavar="COMMAND")
    commands.required = True
    v = commands.add_parser("verify", help="check chains and checkpoint signatures")
    v.add_argument("dir", help="the policy's audit.dir")
    v.add_argument("--key", metavar="PUB", help="Ed25519 public key PEM (from keygen)")
    v.set_defaults(func=cmd_verify)
    k = commands.add_parser("keygen", help="write an Ed25519 key pair (PEM)")
    k.add_argument("out", help="private key file to create (mode 0600)")
    k.add_argument("--public", metavar="FILE", help="public key file (default OUT.pub)")
    k.add_argument("--force", action="store_true", help="replace OUT if it exists")
    k.set_defaults(func=cmd_keygen)
