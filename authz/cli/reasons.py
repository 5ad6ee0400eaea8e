"""``authz reasons``: print the reason registry (:mod:`authz.reasons`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from authz.reasons import REASONS, markdown_table


def cmd_reasons(args: argparse.Namespace) -> int:
    if args.format == "json":
        rows = [
            {"code": r.code, "status": r.status, "phase": r.phase, "description": r.description}
            for r in REASONS.values()
        ]
        print(json.dumps(rows, indent=2))
    elif args.format == "markdown":
        print(markdown_table())
    else:
        width = max(len(code) for code in REASONS)
        for r in REASONS.values():
            status = str(r.status) if r.status else "-"
            print(f"{r.code:<{width}}  {status:>3}  {r.phase:<9}  {r.description}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("reasons", help="print every reason code: status, phase, when")
    p.add_argument("--format", choices=["text", "json", "markdown"], default="text")
    p.set_defaults(func=cmd_reasons)
