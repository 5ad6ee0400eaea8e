"""``authz inventory`` and ``authz explain --control``: the control plane's commands.

Both reach the running service's control plane (``authz serve --control``, default
127.0.0.1:9193) with the credentials of :mod:`authz.control.client`; with
``--workers N`` the service answers for every worker. Exit codes: 0 (explain:
allow), 1 (explain: deny; inventory: the OpenAPI file could not be written),
2 (bad flags or credentials files), 3 (the call failed: unreachable,
UNAUTHENTICATED, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import grpc
import yaml

from authz.control.client import ClientConfigError, connect
from authz.control.options import add_client_arguments, client_settings
from authz.control.render import (
    as_dict,
    explanation_dict,
    openapi_skeleton,
    render_explanation,
    render_table,
)
from authz.v1 import admin_pb2


def _call_failed(command: str, args: argparse.Namespace, exc: grpc.RpcError) -> int:
    code = exc.code()
    hint = ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        hint = " (give --token-file, or --tls-cert/--tls-key for mTLS)"
    print(f"authz {command}: {args.control}: {code.name}: {exc.details()}{hint}", file=sys.stderr)
    return 3


def _ask(command: str, args: argparse.Namespace, method: str, request: Any) -> Any:
    """The control plane's answer to one call, or the exit code when there is none
    (2: the client's settings are wrong; otherwise as :func:`_call_failed`)."""
    try:
        with connect(timeout=args.timeout, **client_settings(args)) as admin:
            return admin.call(method, request)
    except ClientConfigError as exc:
        print(f"authz {command}: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        return _call_failed(command, args, exc)


def cmd_inventory(args: argparse.Namespace) -> int:
    request = admin_pb2.GetInventoryRequest(undeclared_only=args.undeclared)
    inventory = _ask("inventory", args, "GetInventory", request)
    if isinstance(inventory, int):
        return inventory
    if args.openapi:
        doc = openapi_skeleton(inventory)
        text = (
            json.dumps(doc, indent=2) + "\n"
            if args.openapi.endswith(".json")
            else yaml.safe_dump(doc, sort_keys=False)
        )
        try:
            if args.openapi == "-":
                sys.stdout.write(text)
                return 0
            with open(args.openapi, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"authz inventory: {args.openapi}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(as_dict(inventory), indent=2))
    else:
        print(render_table(inventory))
        if args.openapi:
            print(f"OpenAPI skeleton written to {args.openapi}")
    return 0


def add_inventory_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inventory",
        help="show the API inventory of a running service (declared and undeclared "
        "endpoints), from its control plane",
    )
    add_client_arguments(p, required=True)
    p.add_argument("--undeclared", action="store_true", help="only endpoints no route declares")
    p.add_argument("--json", action="store_true", help="print the inventory as JSON")
    p.add_argument(
        "--openapi",
        metavar="FILE",
        help="also write an OpenAPI 3.1 skeleton of what was observed (.json: JSON, else "
        "YAML; - for stdout)",
    )
    p.set_defaults(func=cmd_inventory)


def remote_explain(args: argparse.Namespace, url: str, headers: dict[str, str], body: bytes) -> int:
    """``authz explain --control HOST:PORT URL``: ask the running service."""
    certificate = ""
    if getattr(args, "cert", None):
        from urllib.parse import quote

        try:
            with open(args.cert, encoding="ascii") as fh:
                certificate = quote(fh.read(), safe="")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"authz explain: --cert {args.cert}: {exc}", file=sys.stderr)
            return 2
    request = admin_pb2.ExplainRequest(
        method=args.request or "",
        url=url,
        headers=[admin_pb2.Header(name=k, value=v) for k, v in headers.items()],
        body=body,
        principal=args.principal or "",
        certificate=certificate,
        source_address=args.source,
    )
    explanation = _ask("explain", args, "Explain", request)
    if isinstance(explanation, int):
        return explanation
    if args.json:
        print(json.dumps(explanation_dict(explanation), indent=2))
    else:
        print(render_explanation(explanation))
    return 0 if explanation.allowed else 1


def add_explain_control_arguments(parser: argparse.ArgumentParser) -> None:
    """``authz explain``'s flags for asking a running service instead of a policy file."""
    g = parser.add_argument_group(
        "running service", "with --control, explain on the running service's policy"
    )
    add_client_arguments(g, required=False)
    g.add_argument("--cert", metavar="PEM", help="peer certificate Envoy forwards (mTLS)")
