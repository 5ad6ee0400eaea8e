"""``authz demo``: the whole stack locally (dev issuer, upstream, authz, Envoy) with the
demo policy; ``--smoke`` sends the example requests and checks their answers."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from authz import devissuer
from authz.demo.stack import LocalStack, http
from authz.errors import PolicyError
from authz.policy.loader import load_policy

DEMO_ISSUER_PORT = 9000
#: the service's Prometheus scrape endpoint (`serve --metrics`)
METRICS_PORT = 9200


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="run issuer, upstream, authz and Envoy locally with the demo policy"
    )
    p.add_argument("--policy", default="examples/policy.yaml")
    p.add_argument("--port", type=int, default=8080, help="Envoy's listener port")
    p.add_argument("--state-dir", default=".authz-demo", help="keys, tokens, logs")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="send the four example requests, check their statuses, and exit",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    policy = Path(args.policy)
    try:
        config = load_policy(policy)
    except PolicyError as exc:
        for location, message in exc.problems:
            print(f"{location}: {message}", file=sys.stderr)
        return 1
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    key_file = state / "key.pem"
    if key_file.exists():
        key = devissuer.load(key_file)
    else:
        key = devissuer.generate_key("ES256")
        devissuer.save(key, key_file)
    issuer_cfg = next((p for p in config.providers if p.type == "jwt"), None)
    issuer_url = getattr(issuer_cfg, "issuer", f"http://127.0.0.1:{DEMO_ISSUER_PORT}")
    audience = getattr(issuer_cfg, "audiences", ("orders",))[0]
    port = int(issuer_url.rsplit(":", 1)[-1].split("/")[0])
    issuer = devissuer.DevIssuerServer([key], host="127.0.0.1", port=port)
    try:
        issuer.start()
    except OSError as exc:
        print(f"authz demo: cannot start the dev issuer on port {port}: {exc}", file=sys.stderr)
        return 1
    tokens = {
        name: devissuer.mint(
            key, issuer=issuer_url, subject=subject, audience=audience, scopes=scopes, ttl=900
        )
        for name, subject, scopes in (
            ("reader", "alice", "orders:read"),
            ("writer", "bob", "orders:read orders:write"),
        )
    }
    for name, token in tokens.items():
        (state / f"{name}.jwt").write_text(token + "\n")
    stack = LocalStack(
        policy=policy,
        state_dir=state,
        listen_port=args.port,
        authz_port=9191,
        admin_port=9901,
        control_port=9193,
        upstream_port=8000,
        extra_serve_args=("--metrics", f"127.0.0.1:{METRICS_PORT}"),
    )
    try:
        stack.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        issuer.stop()
        print(f"authz demo: {exc} (logs in {state})", file=sys.stderr)
        return 1
    base = stack.base_url
    examples = [
        (200, "allow", "GET", "/v1/orders/42", "reader"),
        (401, "no token", "GET", "/v1/orders/42", None),
        (403, "token lacks orders:write", "POST", "/v1/orders", "reader"),
        (404, "undeclared route (shadow API)", "GET", "/v1/admin/users", None),
    ]
    print(f"\nauthz demo is up: Envoy on {base}, authz gRPC on {stack.authz_address}")
    print(f"policy {config.version}; decisions logged to {stack.decision_log}\n")
    for expected, what, method, path, who in examples:
        auth = f' -H "Authorization: Bearer $(cat {state}/{who}.jwt)"' if who else ""
        verb = f" -X {method}" if method != "GET" else ""
        print(f"# {expected}: {what}")
        print(f"curl -i{verb} {base}{path}{auth}\n")
    print(
        f"# a decision without Envoy:  authz check --server {stack.authz_address} "
        f'-H "Authorization: Bearer $(cat {state}/writer.jwt)" -X POST {base}/v1/orders'
    )
    print(f"# grpcurl:  grpcurl -plaintext {stack.authz_address} list")
    print(f"# metrics:  curl -s http://127.0.0.1:{METRICS_PORT}/metrics\n")
    code = 0
    try:
        if args.smoke:
            for expected, _what, method, path, who in examples:
                headers = {"authorization": f"Bearer {tokens[who]}"} if who else {}
                status, _, body = http(
                    method, base + path, headers, b"{}" if method == "POST" else None
                )
                reason = ""
                with contextlib.suppress(ValueError, AttributeError):
                    reason = json.loads(body).get("error", "")
                ok = status == expected
                code |= 0 if ok else 1
                print(f"{'ok  ' if ok else 'FAIL'} {method} {path} -> {status} {reason}")
        else:
            print("Ctrl-C stops the stack.")
            _wait_for_signal()
    finally:
        stack.stop()
        issuer.stop()
    return code


def _wait_for_signal() -> None:
    stop = False

    def handler(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop:
        time.sleep(0.2)
