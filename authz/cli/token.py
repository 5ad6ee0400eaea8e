"""``authz token``: development keys, tokens and a local issuer (keygen, mint, serve,
jwks), over :mod:`authz.devissuer`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from authz.devissuer import (
    ALGORITHMS,
    DevIssuerServer,
    DevKey,
    generate_key,
    jwks,
    load,
    mint,
    save,
)


class _UsageError(Exception):
    """A bad argument: printed as one line, exit code 2."""


def _error(message: str) -> int:
    print(f"authz token: error: {message}", file=sys.stderr)
    return 2


def _load_key(path: str) -> DevKey:
    try:
        return load(path)
    except OSError as exc:
        raise _UsageError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def _parse_claim(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise _UsageError(f"bad --claim {text!r}: expected NAME=VALUE")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw  # not JSON: a plain string (tenant=acme)
    return name, value


def _cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    key_path, jwks_path = out / "key.pem", out / "jwks.json"
    if key_path.exists() and not args.force:
        return _error(f"{key_path} exists (use --force to replace it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        key = generate_key(args.alg)
        save(key, key_path)
        jwks_path.write_text(json.dumps(jwks([key]), indent=2) + "\n")
    except OSError as exc:
        return _error(f"cannot write to {out}: {exc.strerror or exc}")
    print(f"wrote {key_path} and {jwks_path} (alg {key.alg}, kid {key.kid})")
    return 0


def _cmd_mint(args: argparse.Namespace) -> int:
    if args.ttl <= 0:
        return _error(f"--ttl must be positive, got {args.ttl}")
    try:
        key = _load_key(args.key)
        claims = dict(_parse_claim(c) for c in args.claim)
    except _UsageError as exc:
        return _error(str(exc))
    audience = args.aud[0] if len(args.aud) == 1 else args.aud
    token = mint(
        key,
        issuer=args.issuer,
        subject=args.sub,
        audience=audience,
        scopes=args.scope,
        ttl=args.ttl,
        extra_claims=claims,
    )
    print(token)
    return 0


def _cmd_jwks(args: argparse.Namespace) -> int:
    try:
        keys = [_load_key(p) for p in args.key]
    except _UsageError as exc:
        return _error(str(exc))
    print(json.dumps(jwks(keys), indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        keys = [_load_key(p) for p in args.key]
    except _UsageError as exc:
        return _error(str(exc))
    server = DevIssuerServer(keys, host=args.host, port=args.port)
    try:
        server.start()
    except OSError as exc:
        reason = exc.strerror or exc
        print(
            f"authz token: error: cannot listen on {args.host}:{args.port}: {reason}",
            file=sys.stderr,
        )
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(server.url, flush=True)
        # wait() with a timeout so that signal handlers get a chance to run promptly.
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.stop()
    return 0


def _cmd_help(parser: argparse.ArgumentParser) -> Any:
    def show(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        return _error("choose a command: keygen, mint, serve, jwks")

    return show


def register(
    subparsers: argparse._SubParsersAction[Any],
) -> argparse.ArgumentParser:
    """Add the ``token`` command (keygen, mint, serve, jwks) to a CLI's subparsers.

    Every leaf sets ``func``: a callable ``(args) -> int`` exit code.
    """
    token: argparse.ArgumentParser = subparsers.add_parser(
        "token",
        help="development tokens and issuer",
        description="Development keys, tokens and a local OIDC issuer.",
    )
    token.set_defaults(func=_cmd_help(token))
    sub = token.add_subparsers(dest="token_command", metavar="COMMAND")

    p = sub.add_parser("keygen", help="write DIR/key.pem and DIR/jwks.json")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--alg", default="ES256", choices=ALGORITHMS)
    p.add_argument("--force", action="store_true", help="replace an existing key.pem")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("mint", help="print a signed token")
    p.add_argument("--key", required=True, metavar="PEM")
    p.add_argument("--issuer", required=True, metavar="URL")
    p.add_argument("--sub", required=True)
    p.add_argument("--aud", required=True, action="append", help="repeat for several")
    p.add_argument("--scope", default="", help='space-separated, e.g. "orders:read orders:write"')
    p.add_argument("--ttl", type=int, default=300, help="seconds (default 300)")
    p.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra claim; VALUE is JSON if it parses as JSON, else a string",
    )
    p.set_defaults(func=_cmd_mint)

    p = sub.add_parser("serve", help="serve discovery and JWKS until interrupted")
    p.add_argument("--key", required=True, action="append", metavar="PEM")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("jwks", help="print the public JWKS of one or more keys")
    p.add_argument("--key", required=True, action="append", metavar="PEM")
    p.set_defaults(func=_cmd_jwks)
    return token
