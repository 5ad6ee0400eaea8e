"""``authz report POLICY [--audit DIR] [--json]``: exposure per data class.

Per class (highest first): its routes, who reaches them (providers, SPIFFE IDs,
subjects allowed by claims, API keys) and the scopes they need; the static API keys
with their age, expiry and whether they expire within ``--expiry-days``; and, with
``--audit DIR``, the tokens the audit trail saw: long-lived (``--long-lived``) and
rarely used (``--rare-uses``, ``--rare-days``), counted per class. Exit 0; 1 when the
policy is invalid (its problems printed as ``authz validate`` does); 2 for bad
arguments or an audit directory that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from authz.errors import PolicyError
from authz.units import DurationRangeError, DurationSyntaxError, parse_duration


def _long_lived(value: str) -> float:
    try:
        return parse_duration(value, minimum=1, maximum=365 * 86400)
    except (DurationSyntaxError, DurationRangeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _days(value: str) -> float:
    try:
        days = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {value!r}") from None
    if not 0 <= days <= 36500:
        raise argparse.ArgumentTypeError(f"expected days from 0 to 36500, got {value!r}")
    return days


def _uses(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 1_000_000:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to 1000000, got {value!r}"
        )
    return int(value)


def _now(value: str) -> float:
    from authz.report.usage import parse_time

    when = parse_time(float(value) if value.replace(".", "", 1).isdigit() else value)
    if when is None:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time (2026-12-01T00:00:00Z) or unix seconds, got {value!r}"
        )
    return when


def cmd_report(args: argparse.Namespace) -> int:
    from authz.policy.loader import load_policy
    from authz.report.exposure import exposure
    from authz.report.render import as_json, as_text
    from authz.report.usage import Thresholds, scan

    try:
        config = load_policy(args.policy)
    except PolicyError as exc:
        for location, message in exc.problems:
            print(f"{location}: {message}", file=sys.stderr)
        n = len(exc.problems)
        print(f"{args.policy}: invalid ({n} problem{'s' if n != 1 else ''})", file=sys.stderr)
        return 1
    now = args.now if args.now is not None else time.time()
    exp = exposure(config, now=now, expiry_days=args.expiry_days)
    thresholds = Thresholds(
        long_lived=args.long_lived, rare_uses=args.rare_uses, rare_days=args.rare_days
    )
    usage = None
    if args.audit is not None:
        try:
            usage = scan(args.audit, now=now, class_of=exp.class_of(), thresholds=thresholds)
        except OSError as exc:
            print(f"authz report: --audit {args.audit}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(as_json(exp, usage, thresholds), indent=2))
    else:
        sys.stdout.write(as_text(exp, usage, thresholds))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="exposure per data class: routes, who reaches them, API keys, tokens seen",
    )
    p.add_argument("policy")
    p.add_argument("--audit", metavar="DIR", help="audit JSON-lines files (*.jsonl) to read")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument(
        "--expiry-days",
        type=_days,
        default=30.0,
        metavar="DAYS",
        help="flag API keys expiring within this many days (default 30)",
    )
    p.add_argument(
        "--long-lived",
        type=_long_lived,
        default=3600.0,
        metavar="DURATION",
        help="tokens whose exp - iat is above this are long-lived (default 1h)",
    )
    p.add_argument(
        "--rare-uses",
        type=_uses,
        default=3,
        metavar="N",
        help="tokens seen fewer than N times are rarely used (default 3)",
    )
    p.add_argument(
        "--rare-days",
        type=_days,
        default=30.0,
        metavar="DAYS",
        help="... as are tokens not seen in the last DAYS days (default 30)",
    )
    p.add_argument(
        "--now",
        type=_now,
        default=None,
        metavar="TIME",
        help="report as of this time (RFC 3339 or unix seconds; default: now)",
    )
    p.set_defaults(func=cmd_report)
