"""``authz explain POLICY URL``: decide one request in-process and show every stage.

Builds the request as ``authz check`` does (a CheckRequest, read back as the
service reads it), runs :meth:`authz.engine.PolicyEngine.explain` on the policy
file and prints the decision and the trace. Local: nothing is sent anywhere but
to the policy's own key sets (``jwks_uri``), as the service would fetch them.

``authz explain --control HOST:PORT URL`` asks the running service's control
plane instead (:mod:`authz.control.commands`): its policy, its key sets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from authz.errors import PolicyError
from authz.explain import render


def _header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip().lower(), val.strip()


def cmd_explain(args: argparse.Namespace) -> int:
    from authz.engine import CompiledPolicy, PolicyEngine
    from authz.policy.loader import load_policy
    from authz.transport.envoy_grpc import build_check_request, to_request

    if args.control is not None:  # one positional: the URL
        if args.url is not None:
            print("authz explain: with --control, give the URL only (no policy file)",
                  file=sys.stderr)  # fmt: skip
            return 2
        from authz.control.commands import remote_explain

        body = args.data.encode() if args.data is not None else b""
        return remote_explain(args, args.policy, dict(args.header), body)
    if args.url is None:
        print("authz explain: give POLICY URL, or --control HOST:PORT URL", file=sys.stderr)
        return 2
    url = urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        print(f"authz explain: expected an http(s) URL, got {args.url!r}", file=sys.stderr)
        return 2
    try:
        config = load_policy(args.policy)
    except PolicyError as exc:
        for location, message in exc.problems:
            print(f"{location}: {message}", file=sys.stderr)
        return 2
    headers = dict(args.header)
    body = args.data.encode() if args.data is not None else b""
    if args.data is not None:
        headers.setdefault("content-type", "application/json")
        headers.setdefault("content-length", str(len(body)))
    method = args.request or ("POST" if args.data is not None else "GET")
    request = to_request(
        build_check_request(
            method=method.upper(),
            path=(url.path or "/") + (f"?{url.query}" if url.query else ""),
            host=url.netloc,
            headers=headers,
            body=body,
            principal=args.principal or "",
            source_address=args.source,
            request_id="cli-explain",
            scheme=url.scheme,
        )
    )

    async def run() -> tuple[Any, Any]:
        policy = CompiledPolicy(config)
        await policy.start()
        try:
            return await PolicyEngine(policy).explain(request)
        finally:
            await policy.close()

    decision, steps = asyncio.run(run())
    verdict = "ALLOW" if decision.allowed else "DENY"
    if args.json:
        out = {
            "decision": verdict.lower(),
            "status": decision.status,
            "reason": decision.reason,
            "route": decision.route,
            "monitored": decision.monitored,
            "steps": [step.as_dict() for step in steps],
        }
        print(json.dumps(out, indent=2))
    else:
        monitored = " (monitor: would deny)" if decision.monitored else ""
        print(f"{verdict} {decision.status} {decision.reason}{monitored}")
        print(render(steps))
    return 0 if decision.allowed else 1


def register(sub: Any) -> None:
    from authz.control.commands import add_explain_control_arguments

    p = sub.add_parser(
        "explain",
        help="decide one request stage by stage, against a policy file or (--control) "
        "the running service",
    )
    p.add_argument("policy", help="the policy file (with --control: the URL)")
    p.add_argument(
        "url", nargs="?", help="the request URL, e.g. http://api.local/v1/orders?limit=5"
    )
    p.add_argument("-X", "--request", metavar="METHOD", help="default GET, POST with --data")
    p.add_argument(
        "-H", "--header", type=_header, action="append", default=[], metavar="'NAME: VALUE'"
    )
    p.add_argument("-d", "--data", metavar="DATA", help="request body (JSON unless -H says)")
    p.add_argument("--principal", help="the SPIFFE ID Envoy verified for the peer (mTLS)")
    p.add_argument("--source", default="127.0.0.1", help="client address Envoy saw")
    p.add_argument("--json", action="store_true", help="print the decision and trace as JSON")
    add_explain_control_arguments(p)
    p.set_defaults(func=cmd_explain)
