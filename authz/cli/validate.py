"""``authz validate POLICY``: load a policy and print every problem with its location."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from authz.errors import PolicyError


def cmd_validate(args: argparse.Namespace) -> int:
    from authz.policy.loader import load_policy

    try:
        config = load_policy(args.policy)
    except PolicyError as exc:
        for location, message in exc.problems:
            print(f"{location}: {message}", file=sys.stderr)
        n = len(exc.problems)
        print(f"{args.policy}: invalid ({n} problem{'s' if n != 1 else ''})", file=sys.stderr)
        return 1
    imported = sum(1 for r in config.routes if r.contract and r.contract.origin != "policy")
    print(
        f"{args.policy}: valid, version {config.version}, "
        f"{len(config.providers)} providers, {len(config.routes)} routes"
        + (f" ({imported} from OpenAPI)" if imported else "")
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check a policy file; print every error with its location")
    p.add_argument("policy")
    p.set_defaults(func=cmd_validate)
