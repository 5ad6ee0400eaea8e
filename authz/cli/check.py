"""``authz check URL``: send one request to a running service as Envoy would (a
CheckRequest over gRPC) and print the decision."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from authz.cli import args as A


def cmd_check(args: argparse.Namespace) -> int:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    from authz.transport.envoy_grpc import build_check_request

    url = urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        print(f"authz check: expected an http(s) URL, got {args.url!r}", file=sys.stderr)
        return 2
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = dict(args.header)
    body = b""
    if args.data is not None:
        if args.data.startswith("@"):
            try:
                with open(args.data[1:], "rb") as fh:
                    body = fh.read()
            except OSError as exc:
                print(f"authz check: --data {args.data}: {exc.strerror}", file=sys.stderr)
                return 2
        else:
            body = args.data.encode()
        headers.setdefault("content-length", str(len(body)))
        headers.setdefault("content-type", "application/json")
    method = args.request or ("POST" if args.data is not None else "GET")
    certificate = ""
    if args.cert:
        from urllib.parse import quote

        try:
            with open(args.cert, encoding="ascii") as fh:
                certificate = quote(fh.read(), safe="")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"authz check: --cert {args.cert}: {exc}", file=sys.stderr)
            return 2
    request = build_check_request(
        method=method.upper(),
        path=target,
        host=url.netloc,
        headers=headers,
        body=body,
        principal=args.principal or "",
        certificate=certificate,
        source_address=args.source,
        request_id=args.request_id,
        scheme=url.scheme,
    )
    try:
        with grpc.insecure_channel(args.server) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            response = stub.Check(request, timeout=args.timeout)
    except grpc.RpcError as exc:
        print(f"authz check: {args.server}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 3
    meta = dict(response.dynamic_metadata)
    if response.HasField("ok_response"):
        status, verdict = 200, "ALLOW"
        headers_out = [(h.header.key, h.header.value) for h in response.ok_response.headers]
        removed = list(response.ok_response.headers_to_remove)
        body_out = ""
    else:
        status, verdict = response.denied_response.status.code, "DENY"
        headers_out = [(h.header.key, h.header.value) for h in response.denied_response.headers]
        removed = []
        body_out = response.denied_response.body
    reason = meta.get("reason", "")
    if args.json:
        print(
            json.dumps(
                {
                    "decision": verdict.lower(),
                    "status": status,
                    "reason": reason,
                    "metadata": meta,
                    "headers": dict(headers_out),
                    "headers_to_remove": removed,
                    "body": body_out,
                },
                indent=2,
            )
        )
    else:
        monitored = " (monitor: would deny)" if verdict == "ALLOW" and reason != "allowed" else ""
        print(f"{verdict} {status} {reason}{monitored}")
        for key in ("decision_id", "subject", "policy_version"):
            if meta.get(key):
                print(f"  {key}: {meta[key]}")
        for k, v in headers_out:
            print(f"  {'upstream' if verdict == 'ALLOW' else 'response'} header {k}: {v}")
        for k in removed:
            print(f"  upstream header removed: {k}")
        if body_out:
            print(f"  body: {body_out}")
    return 0 if verdict == "ALLOW" else 1


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="send one request to a running service; print the decision")
    p.add_argument("url", help="the request URL, e.g. http://api.local/v1/orders?limit=5")
    p.add_argument(
        "-X", "--request", metavar="METHOD", help="method (default GET, POST with --data)"
    )
    p.add_argument(
        "-H", "--header", type=A.header, action="append", default=[], metavar="'NAME: VALUE'"
    )
    p.add_argument(
        "-d", "--data", metavar="DATA",
        help="request body, or @FILE (Content-Type application/json unless -H sets one)",
    )  # fmt: skip
    p.add_argument("--principal", help="the SPIFFE ID Envoy verified for the peer (mTLS)")
    p.add_argument("--cert", metavar="PEM", help="peer certificate Envoy forwards (mTLS)")
    p.add_argument("--source", default="127.0.0.1", help="client address Envoy saw")
    p.add_argument("--request-id", default="cli-check")
    p.add_argument("--server", type=A.address, default="127.0.0.1:9191", metavar="HOST:PORT")
    p.add_argument("--timeout", type=A.positive, default=5.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="print the whole response as JSON")
    p.set_defaults(func=cmd_check)
