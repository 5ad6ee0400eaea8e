"""``authz blocks``, ``authz revoke`` and ``authz actions``: what is in force, and why.

Through the running service's control plane (the credentials of
:mod:`authz.control.client`, as ``authz inventory``); with ``--workers N`` a change
reaches every worker, and with a Redis store every replica.

::

    authz blocks list [--all] [--json]          blocks (--all: throttles, step-ups too)
    authz blocks add --address 203.0.113.7 [--ttl 15m] [--note TEXT]
    authz blocks add --prefix 203.0.113.0/24 | --subject S | --api-key ID | --token JWT
                     | --token-id ID
    authz blocks lift --address 203.0.113.7
    authz blocks add|lift --response throttle|step_up --subject S ...   (default: block)
    authz revoke list|add|lift --token JWT | --token-id JTI | --subject S | --api-key ID
    authz actions [--limit N] [--detector NAME] [--json]

Exit codes: 0 done (lift: something was lifted), 1 (lift: nothing was in force),
2 bad arguments (a target that is not one of its kind, a TTL that is not a duration;
the control plane's INVALID_ARGUMENT too), 3 the call failed (unreachable,
UNAUTHENTICATED, a policy without ``enforcement:``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc

from authz.control.client import ClientConfigError, connect
from authz.control.options import add_client_arguments, client_settings
from authz.policy.document import parse_duration
from authz.respond.targets import TargetError, normalize, token_id
from authz.v1 import admin_pb2

#: flag -> target kind, per command (revocations name credentials or their holders)
BLOCK_TARGETS = {
    "address": "address",
    "prefix": "prefix",
    "subject": "subject",
    "api_key": "api_key",
    "token": "token",
    "token_id": "token",
}
REVOKE_TARGETS = {k: v for k, v in BLOCK_TARGETS.items() if v in ("subject", "api_key", "token")}


def _duration(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 15m, 1h, 7d; got {value!r}"
        ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration above zero, got {value!r}")
    return seconds


def _ask(
    command: str, args: argparse.Namespace, method: str, request: Any, *, not_found: int = 3
) -> Any:
    """The answer, or the exit code (2: bad settings or INVALID_ARGUMENT, ``not_found``:
    NOT_FOUND, 3: failed). Every control-plane command asks through this."""
    try:
        with connect(timeout=args.timeout, **client_settings(args)) as admin:
            return admin.call(method, request)
    except ClientConfigError as exc:
        print(f"authz {command}: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code()
        hint = ""
        if code == grpc.StatusCode.UNAUTHENTICATED:
            hint = " (give --token-file, or --tls-cert/--tls-key for mTLS)"
        print(f"authz {command}: {args.control}: {code.name}: {exc.details()}{hint}",
              file=sys.stderr)  # fmt: skip
        if code == grpc.StatusCode.NOT_FOUND:
            return not_found
        return 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 3


def _target(command: str, args: argparse.Namespace, targets: dict[str, str]) -> tuple[str, str]:
    """(kind, normalised target) from the one target flag given; raises TargetError."""
    for flag, kind in targets.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        name = "--" + flag.replace("_", "-")
        try:
            return kind, token_id(value) if flag == "token" else normalize(kind, value)
        except TargetError as exc:
            raise TargetError(f"{name}: {exc}") from None
    raise TargetError("give one target")  # argparse makes the group required


def _when(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _left(expires: float) -> str:
    seconds = max(math.ceil(expires - time.time()), 0)
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _as_dict(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


def render_enforcements(answer: Any) -> str:
    entries = list(answer.enforcements)
    head = f"{len(entries)} in force; store {answer.store or 'memory'}" + (
        f"; {answer.workers} workers" if answer.workers > 1 else ""
    )
    if not entries:
        return head
    rows = [("RESPONSE", "KIND", "TARGET", "BY", "SINCE", "LEFT", "NOTE")]
    for e in entries:
        mode = " (monitor)" if e.monitor else ""
        rows.append((
            e.response + mode, e.target_kind, e.target, f"{e.source} {e.by}",
            _when(e.created), _left(e.expires), e.note,
        ))  # fmt: skip
    lines = [head, _table(rows)]
    for e in entries:
        if e.evidence:
            evidence = ", ".join(f"{k}={v}" for k, v in sorted(e.evidence.items()))
            lines.append(f"  {e.response} {e.target}: {evidence}")
    return "\n".join(lines)


def render_actions(answer: Any) -> str:
    actions = list(answer.actions)
    head = f"{len(actions)} recent actions" + (
        f"; {answer.workers} workers" if answer.workers > 1 else ""
    )
    if not actions:
        return head
    rows = [("TIME", "DETECTOR", "RESPONSE", "KIND", "TARGET", "TTL", "OUTCOME", "EVIDENCE")]
    for a in actions:
        evidence = ", ".join(f"{k}={v}" for k, v in sorted(a.evidence.items()))
        rows.append((
            _when(a.time), a.detector, a.response + (" (monitor)" if a.monitor else ""),
            a.target_kind, a.target, f"{a.ttl:g}s", a.outcome, evidence,
        ))  # fmt: skip
    return "\n".join([head, _table(rows)])


# --------------------------------------------------------------------------- commands


def _list(command: str, responses: tuple[str, ...]) -> Any:
    def run(args: argparse.Namespace) -> int:
        wanted = () if getattr(args, "all", False) else responses
        request = admin_pb2.ListEnforcementsRequest(responses=list(wanted))
        answer = _ask(command, args, "ListEnforcements", request)
        if isinstance(answer, int):
            return answer
        print(json.dumps(_as_dict(answer), indent=2) if args.json else render_enforcements(answer))
        return 0

    return run


def _add(command: str, response: str, targets: dict[str, str]) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            kind, target = _target(command, args, targets)
        except TargetError as exc:
            print(f"authz {command}: {exc}", file=sys.stderr)
            return 2
        request = admin_pb2.AddEnforcementRequest(
            response=args.response, target_kind=kind, target=target,
            ttl_seconds=args.ttl or 0.0, note=args.note or "",
        )  # fmt: skip
        answer = _ask(command, args, "AddEnforcement", request)
        if isinstance(answer, int):
            return answer
        if args.json:
            print(json.dumps(_as_dict(answer), indent=2))
        else:
            print(f"{answer.response} {answer.target_kind} {answer.target} until "
                  f"{_when(answer.expires)} ({_left(answer.expires)}), by {answer.by}")  # fmt: skip
        return 0

    return run


def _lift(command: str, response: str, targets: dict[str, str]) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            kind, target = _target(command, args, targets)
        except TargetError as exc:
            print(f"authz {command}: {exc}", file=sys.stderr)
            return 2
        request = admin_pb2.LiftEnforcementRequest(
            response=args.response, target_kind=kind, target=target
        )
        answer = _ask(command, args, "LiftEnforcement", request)
        if isinstance(answer, int):
            return answer
        if args.json:
            print(json.dumps(_as_dict(answer), indent=2))
        elif answer.lifted:
            e = answer.enforcement
            print(f"lifted {e.response} {e.target_kind} {e.target} (was by {e.source} {e.by})")
        else:
            print(f"nothing in force: {args.response} {kind} {target}")
        return 0 if answer.lifted else 1

    return run


def cmd_actions(args: argparse.Namespace) -> int:
    request = admin_pb2.ListActionsRequest(limit=args.limit, detector=args.detector or "")
    answer = _ask("actions", args, "ListActions", request)
    if isinstance(answer, int):
        return answer
    print(json.dumps(_as_dict(answer), indent=2) if args.json else render_actions(answer))
    return 0


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if not 1 <= number <= 100_000:
        raise argparse.ArgumentTypeError(f"expected 1 to 100000, got {value!r}")
    return number


def _target_flags(parser: argparse.ArgumentParser, targets: dict[str, str]) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    helps = {
        "address": ("IP", "a client address (IPv4 or IPv6)"),
        "prefix": ("NET", "an IPv4 /24 or IPv6 /64, e.g. 203.0.113.0/24"),
        "subject": ("SUB", "a verified subject or SPIFFE ID"),
        "api_key": ("ID", "an API key's id in the policy, or its digest"),
        "token": ("JWT", "a token (named by its jti, else the digest of header.payload)"),
        "token_id": ("ID", "a token's jti or digest, as `authz actions` shows it"),
    }
    for flag in targets:
        metavar, text = helps[flag]
        group.add_argument("--" + flag.replace("_", "-"), dest=flag, metavar=metavar, help=text)


def _response_flag(parser: argparse.ArgumentParser, response: str) -> None:
    if response != "block":
        parser.set_defaults(response=response)
        return
    parser.add_argument(
        "--response", choices=("block", "throttle", "step_up"), default="block",
        help="block (default: 403), throttle (the policy's enforcement.throttle, 429) or "
        "step_up (401 with the RFC 9470 challenge)",
    )  # fmt: skip


def _register(sub: Any, command: str, response: str, targets: dict[str, str], what: str) -> None:
    p = sub.add_parser(command, help=f"list, add or lift {what} on the running service")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    listing = actions.add_parser("list", help=f"the {what} in force")
    add_client_arguments(listing, required=True)
    listing.add_argument("--json", action="store_true")
    if response == "block":
        listing.add_argument("--all", action="store_true",
                             help="throttles, step-ups and revocations too")  # fmt: skip
    listing.set_defaults(func=_list(f"{command} list", (response,)))
    add = actions.add_parser("add", help="add one (logged with you as its author)")
    _target_flags(add, targets)
    _response_flag(add, response)
    add.add_argument(
        "--ttl", type=_duration, metavar="DURATION",
        help="how long (default: the policy's enforcement.block_ttl or revoke_ttl)",
    )  # fmt: skip
    add.add_argument("--note", metavar="TEXT", help="why (shown in the list)")
    add.add_argument("--json", action="store_true")
    add_client_arguments(add, required=True)
    add.set_defaults(func=_add(f"{command} add", response, targets))
    lift = actions.add_parser("lift", help="lift one (logged with you as who lifted it)")
    _target_flags(lift, targets)
    _response_flag(lift, response)
    lift.add_argument("--json", action="store_true")
    add_client_arguments(lift, required=True)
    lift.set_defaults(func=_lift(f"{command} lift", response, targets))


def register(sub: Any) -> None:
    _register(sub, "blocks", "block", BLOCK_TARGETS, "blocks")
    _register(sub, "revoke", "revoke", REVOKE_TARGETS, "revocations")
    p = sub.add_parser(
        "actions", help="the detectors' recent automatic actions, with their evidence"
    )
    add_client_arguments(p, required=True)
    p.add_argument("--limit", type=_positive, default=100, metavar="N")
    p.add_argument("--detector", metavar="NAME", help="only this detector's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_actions)
