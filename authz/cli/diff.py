"""``authz diff OLD NEW``: what changes, per route, from one policy file to another.

Both files are loaded and compiled as ``authz serve`` would (OpenAPI documents
included); the comparison is :func:`authz.policy.changes.compare` of the compiled
configs, with the widenings a reload would log. Text (grouped per route) or
``--json`` (the structure of :meth:`~authz.policy.changes.PolicyDiff.as_dict`).

Exit codes, as diff(1): 0 no change, 1 changes, 2 an error (a file that does not
load: every problem, located).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from authz.errors import PolicyError
from authz.policy.changes import Change, PolicyDiff, Section

#: Values longer than this are cut in the text form (--json has them whole).
MAX_VALUE = 160


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def _change(c: Change, *, added: bool = False) -> str:
    if c.summary and not added:
        return f"  {c.field}: {c.summary}"
    if added:
        return f"  {c.field}: {c.summary or _value(c.new)}"
    if c.old is None:
        return f"  {c.field}: added {_value(c.new)}"
    if c.new is None:
        return f"  {c.field}: removed {_value(c.old)}"
    return f"  {c.field}: {_value(c.old)} -> {_value(c.new)}"


def _section(kind: str, s: Section) -> list[str]:
    where = f"  {' '.join(s.methods)} {s.path}" if s.path else ""
    lines = [f"{kind} {s.name} ({s.change}){where}"]
    lines.extend(_change(c, added=s.change == "added") for c in s.changes)
    lines.extend(f"  ! {f.level}: widens access: {f.message}" for f in s.widenings)
    return lines


def render(diff: PolicyDiff) -> str:
    """The text form: policy-wide changes, providers, then one block per route."""
    lines = [
        f"--- {diff.old_source} ({diff.old_version})",
        f"+++ {diff.new_source} ({diff.new_version})",
    ]
    if not diff.changed:
        lines.append("no change")
        return "\n".join(lines)
    shown = {id(f) for s in diff.providers for f in s.widenings}
    wide = [f for f in diff.widenings if f.route is None and id(f) not in shown]
    if diff.policy or wide:
        lines.append("policy")
        lines.extend(_change(c) for c in diff.policy)
        lines.extend(f"  ! {f.level}: widens access: {f.message}" for f in wide)
    for s in diff.providers:
        lines.extend(_section("provider", s))
    for s in diff.routes:
        lines.extend(_section("route", s))
    counts = {
        k: sum(1 for s in diff.routes if s.change == k) for k in ("added", "removed", "changed")
    }
    lines.append(
        f"{len(diff.routes)} route(s) differ: {counts['changed']} changed, "
        f"{counts['added']} added, {counts['removed']} removed; {len(diff.providers)} provider(s); "
        f"{len(diff.policy)} policy-wide change(s); {len(diff.widenings)} widening(s)"
    )
    return "\n".join(lines)


def cmd_diff(args: argparse.Namespace) -> int:
    from authz.policy.changes import compare
    from authz.policy.loader import load_policy

    configs = []
    for path in (args.old, args.new):
        try:
            configs.append(load_policy(path))
        except PolicyError as exc:
            for location, message in exc.problems:
                print(f"{location}: {message}", file=sys.stderr)
            print(f"authz diff: {path} does not load", file=sys.stderr)
            return 2
    diff = compare(configs[0], configs[1])
    print(json.dumps(diff.as_dict(), indent=2) if args.json else render(diff))
    return 1 if diff.changed else 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diff",
        help="what changes per route from one policy file to another (exit 0 same, 1 changed)",
    )
    p.add_argument("old", help="the policy in use (or any policy file)")
    p.add_argument("new", help="the candidate")
    p.add_argument("--json", action="store_true", help="the changes as JSON (stable structure)")
    p.set_defaults(func=cmd_diff)
