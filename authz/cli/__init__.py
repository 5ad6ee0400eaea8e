"""The ``authz`` command line, one module per command.

``serve`` runs the service; ``validate``, ``explain``, ``reasons``, ``report`` and
``envoy-config`` work on a policy file; ``check`` and ``inventory`` talk to a running service;
``token`` and ``demo`` are for development. Each module has ``register(subparsers)``
that adds its parser and sets ``func`` (``args -> exit code``); :mod:`.args` holds
the argument types they share.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from authz.cli.args import Parser


def build_parser() -> argparse.ArgumentParser:
    from authz import __version__
    from authz.cli import (
        audit,
        check,
        demo,
        diff,
        envoy_config,
        explain,
        policy_test,
        reasons,
        replay,
        report,
        serve,
        token,
        validate,
    )
    from authz.control import enforcement_commands, policy_commands
    from authz.control.commands import add_inventory_parser

    parser = Parser(prog="authz", description="API security gateway for Envoy (ext_authz).")
    parser.add_argument("--version", action="version", version=f"authz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    validate.register(sub)
    serve.register(sub)
    check.register(sub)
    add_inventory_parser(sub)
    envoy_config.register(sub)
    token.register(sub)
    demo.register(sub)
    reasons.register(sub)
    explain.register(sub)
    report.register(sub)
    enforcement_commands.register(sub)
    policy_test.register(sub)
    diff.register(sub)
    policy_commands.register(sub)
    audit.register(sub)
    replay.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if list(sys.argv[1:] if argv is None else argv)[:1] == ["serve"]:
        # SIGHUP's default action terminates. Until the service installs its reload
        # handler (start-up reads the policy anyway), a reload request is ignored.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
