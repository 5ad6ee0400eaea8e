"""``authz replay AUDIT_DIR CANDIDATE_POLICY``: what the candidate would have decided.

Re-decides every recorded decision under the candidate (:mod:`authz.audit.replay`)
and reports each divergence: allow -> deny and deny -> allow (and a deny for another
reason), counted by route and reason, with examples; ``--json`` for the same as one
JSON object. Exit 0: no divergence; 1: divergences (the candidate changes outcomes);
2: bad arguments or an invalid candidate policy (its located errors are printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def render(report: Any) -> list[str]:
    lines = [
        f"replayed {report.records} recorded decisions under {report.candidate} "
        f"({report.version}): {report.same} same, {report.divergences} diverge"
    ]
    if report.not_replayable:
        skipped = ", ".join(f"{r} {n}" for r, n in sorted(report.not_replayable.items()))
        lines.append(
            f"  not replayable (decided by rate limits, load shedding, blocks or body "
            f"validation: state or a body the trail does not keep): "
            f"{sum(report.not_replayable.values())} ({skipped})"
        )
    if report.compared_without:
        unrun = ", ".join(f"{s} {n}" for s, n in sorted(report.compared_without.items()))
        lines.append(
            f"  compared without the candidate's stages replay does not run: {unrun} "
            "(same or diverging up to those stages only)"
        )
    for title, table in (
        ("allow -> deny", report.allow_to_deny),
        ("deny -> allow", report.deny_to_allow),
        ("deny for another reason", report.reason_changed),
    ):
        if not table:
            continue
        lines.append(f"{title}: {sum(g.count for g in table.values())}")
        for group in sorted(table.values(), key=lambda g: (-g.count, g.route, g.reason)):
            lines.append(f"  route {group.route or '-'}  {group.reason}  {group.count}")
            for ex in group.examples:
                lines.append(
                    f"    e.g. {ex['request_id']} {ex['at']} {ex['request']} subject "
                    f"{ex['subject'] or '-'}: {ex['recorded']} -> {ex['candidate']}"
                )
    return lines


def cmd_replay(args: argparse.Namespace) -> int:
    from authz.audit.replay import replay
    from authz.errors import PolicyError
    from authz.policy.loader import load_policy

    directory = Path(args.audit_dir)
    if not directory.is_dir():
        print(f"authz replay: {directory}: not a directory", file=sys.stderr)
        return 2
    try:
        config = load_policy(args.candidate)
    except PolicyError as exc:
        for location, message in exc.problems:
            print(f"{location}: {message}", file=sys.stderr)
        print("authz replay: the candidate policy is invalid", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"authz replay: {args.candidate}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    report = replay(directory, config)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join(render(report)))
    return 1 if report.divergences else 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay", help="re-decide recorded traffic under a candidate policy; report changes"
    )
    p.add_argument("audit_dir", help="an audit directory (the policy's audit.dir)")
    p.add_argument("candidate", help="the candidate policy file")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_replay)
