"""``authz policy list|rollback VERSION|reload``: the running service's policy versions.

Through the control plane (the credentials of :mod:`authz.control.client`, as
``authz blocks``); with ``--workers N`` every worker answers and every worker rolls
back or reloads.

::

    authz policy list [--json | -q]     the kept versions, the active one first
    authz policy rollback VERSION       make a kept version active (a unique prefix will do)
    authz policy reload                 load the policy file now, even unchanged

A rollback lasts until the file changes, a reload or a restart: restore the file
to keep it (the answer says so when the file holds another version).

Exit codes: 0 done (or already active), 1 no such kept version, 2 bad arguments,
3 the call failed (unreachable, UNAUTHENTICATED, the version or the file did not
become ready or does not load, a worker that did not apply it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from authz.control.enforcement_commands import _as_dict, _table, _when
from authz.control.enforcement_commands import _ask as ask
from authz.control.options import add_client_arguments
from authz.v1 import admin_pb2


def _ask(command: str, args: argparse.Namespace, method: str, request: Any) -> Any:
    """The answer, or the exit code (1 NOT_FOUND, 2 bad settings, 3 failed)."""
    return ask(command, args, method, request, not_found=1)


def render_versions(answer: Any) -> str:
    workers = f"; {answer.workers} workers" if answer.workers > 1 else ""
    lines = [
        f"{len(answer.versions)} kept (at most {answer.capacity}); the policy file holds "
        f"{answer.on_disk or '?'}{workers}"
    ]
    if len(answer.active) > 1:
        lines.append(f"warning: the workers serve different versions: {', '.join(answer.active)}")
    rows = [("", "VERSION", "ORIGIN", "BY", "ACTIVATED", "LOADED", "ROUTES", "SOURCE")]
    for v in answer.versions:
        mark = "*" if v.active else ("f" if v.version == answer.on_disk else "")
        rows.append((
            mark, v.version, v.origin, v.by, _when(v.activated), _when(v.loaded),
            str(v.routes), v.source,
        ))  # fmt: skip
    lines.append(_table(rows))
    lines.append("(* active, f the file's version when it is not the active one)")
    return "\n".join(lines)


def render_change(what: str, answer: Any) -> str:
    if answer.changed:
        verb = "rolled back" if what == "rollback" else "reloaded"
        head = f"{verb}: {answer.previous} -> {answer.active}"
    else:
        head = f"{answer.active} is already active"
    if answer.workers > 1:
        head += f" ({answer.workers} workers)"
    lines = [head]
    if answer.warning:
        lines.append(f"warning: {answer.warning}")
    lines.extend(f"error: worker {line}" for line in answer.errors)
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    answer = _ask("policy list", args, "ListPolicies", admin_pb2.ListPoliciesRequest())
    if isinstance(answer, int):
        return answer
    if args.quiet:
        for v in answer.versions:
            print(v.version)
    else:
        print(json.dumps(_as_dict(answer), indent=2) if args.json else render_versions(answer))
    return 0


def _change(what: str, method: str, request: Any, args: argparse.Namespace) -> int:
    answer = _ask(f"policy {what}", args, method, request)
    if isinstance(answer, int):
        return answer
    print(json.dumps(_as_dict(answer), indent=2) if args.json else render_change(what, answer))
    return 3 if answer.errors else 0


def cmd_rollback(args: argparse.Namespace) -> int:
    version = args.version.strip()
    if not version:
        print("authz policy rollback: give a VERSION (see `authz policy list`)", file=sys.stderr)
        return 2
    request = admin_pb2.RollbackPolicyRequest(version=version)
    return _change("rollback", "RollbackPolicy", request, args)


def cmd_reload(args: argparse.Namespace) -> int:
    return _change("reload", "ReloadPolicy", admin_pb2.ReloadPolicyRequest(), args)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "policy", help="the running service's policy versions: list, rollback, reload"
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    listing = actions.add_parser("list", help="the kept versions, the active one first")
    form = listing.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true")
    form.add_argument("-q", "--quiet", action="store_true", help="versions only, one a line")
    add_client_arguments(listing, required=True)
    listing.set_defaults(func=cmd_list)
    rollback = actions.add_parser(
        "rollback", help="make a kept version active (until the file changes: restore it too)"
    )
    rollback.add_argument("version", metavar="VERSION", help="a kept version or a unique prefix")
    rollback.add_argument("--json", action="store_true")
    add_client_arguments(rollback, required=True)
    rollback.set_defaults(func=cmd_rollback)
    reload = actions.add_parser("reload", help="load the policy file now, even unchanged")
    reload.add_argument("--json", action="store_true")
    add_client_arguments(reload, required=True)
    reload.set_defaults(func=cmd_reload)
