"""The ``authz`` command line: serve | validate | check | inventory | envoy-config | token |
demo."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from authz.errors import PolicyError
from authz.units import DurationRangeError, DurationSyntaxError, parse_duration, parse_host_port


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error names the command and exits 2 without a traceback."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _address(value: str) -> str:
    """HOST:PORT or [IPV6]:PORT (port 0: one the system picks), kept as given."""
    try:
        parse_host_port(value, port_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r} ({exc})") from None
    return value


def _http_address(value: str) -> str:
    """``--http``: HOST:PORT, or PORT / :PORT for 127.0.0.1:PORT (loopback by default)."""
    text = value[1:] if value.startswith(":") else value
    if text.isdigit():
        if int(text) > 65535:
            raise argparse.ArgumentTypeError(f"port {text} is not from 0 to 65535")
        return f"127.0.0.1:{int(text)}"
    try:
        return _address(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT, got {value!r} (PORT or :PORT alone means 127.0.0.1:PORT)"
        ) from None


def _whole(low: int, high: int) -> Any:
    def convert(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {value!r}"
            )
        return int(value)

    convert.__name__ = "number"
    return convert


def _duration(value: str) -> float:
    """Seconds (``5``, ``0.5``; a unit such as ``500ms`` or ``2m`` also works), 0.01 to 1 day."""
    try:
        return parse_duration(value, minimum=0.01, maximum=86400)
    except DurationSyntaxError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    except DurationRangeError:  # also nan and inf
        raise argparse.ArgumentTypeError(
            f"expected seconds from 0.01 to 86400, got {value!r}"
        ) from None


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        # nan compares false with everything and inf never elapses: both would
        # silently disable the timer they configure
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value!r}")
    return number


def _workers(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


DEFAULT_GRPC = "0.0.0.0:9191"

# --------------------------------------------------------------------------- validate


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


# --------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from authz.control.options import options_from_args
    from authz.server import ServeOptions, run_service

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    grpc = args.grpc
    if grpc is None and args.http is None:
        grpc = DEFAULT_GRPC  # no transport named: gRPC, as before
    try:
        limits = _http_options(args)
        control = options_from_args(args)
    except ValueError as exc:
        print(f"authz serve: error: {exc}", file=sys.stderr)
        return 2
    return run_service(
        ServeOptions(
            policy=args.policy,
            grpc=grpc,
            http=args.http,
            http_limits=limits,
            http_secret_file=args.http_secret_file,
            http_trust_network=args.http_insecure_trust_network,
            workers=args.workers,
            decision_log=args.decision_log,
            reload_interval=args.reload_interval,
            reload_settle=args.reload_settle,
            drain_timeout=args.drain_timeout,
            drain_delay=args.drain_delay,
            reuse_port=args.reuse_port or args.workers > 1,
            control=control,
        )
    )


def _http_options(args: argparse.Namespace) -> Any:
    """The HTTP transport's limits from the ``--http-*`` flags, after checking that
    they go together and that the transport may bind where ``--http`` says."""
    from authz.transport.envoy_http import is_loopback, read_secret_file
    from authz.transport.http_server import HttpLimits

    given = [
        f"--{name.replace('_', '-')}"
        for name in _HTTP_FLAGS
        if getattr(args, name) not in (None, False)
    ]
    if args.http is None:
        if given:
            raise ValueError(f"{given[0]} needs --http")
        return HttpLimits()
    if args.http_secret_file is not None:
        read_secret_file(args.http_secret_file)  # fail now, saying what is wrong
        if args.http_insecure_trust_network:
            raise ValueError("--http-insecure-trust-network makes no sense with a secret")
    host = parse_host_port(args.http, port_zero=True).host
    trusted = args.http_secret_file is not None or args.http_insecure_trust_network
    if not trusted and not is_loopback(host):
        raise ValueError(
            f"--http {args.http}: {host} is not a loopback address, and without a "
            "transport secret anyone who can reach the port could forge the "
            "identity headers only Envoy may set. Give --http-secret-file FILE (and "
            "the same file to `authz envoy-config --http-secret-file`), bind "
            "127.0.0.1 (--http PORT), or add --http-insecure-trust-network if only "
            "Envoy can reach this address"
        )
    defaults = HttpLimits()
    target = _pick(args.http_max_target_bytes, defaults.max_target)
    head = _pick(args.http_max_head_bytes, defaults.max_head)
    if target > head:
        raise ValueError(
            f"--http-max-target-bytes {target} is more than --http-max-head-bytes {head} "
            "(the request line, target included, counts toward the head)"
        )
    return HttpLimits(
        max_target=_pick(args.http_max_target_bytes, defaults.max_target),
        max_head=_pick(args.http_max_head_bytes, defaults.max_head),
        header_timeout=_pick(args.http_header_timeout, defaults.header_timeout),
        body_timeout=_pick(args.http_body_timeout, defaults.body_timeout),
        idle_timeout=_pick(args.http_idle_timeout, defaults.idle_timeout),
        max_connections=_pick(args.http_max_connections, defaults.max_connections),
    )


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


_HTTP_FLAGS = (
    "http_max_target_bytes",
    "http_max_head_bytes",
    "http_header_timeout",
    "http_body_timeout",
    "http_idle_timeout",
    "http_max_connections",
    "http_secret_file",
    "http_insecure_trust_network",
)


# --------------------------------------------------------------------------- check


def _parse_header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip().lower(), val.strip()


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


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    from authz import __version__
    from authz.devissuer import add_token_parser
    from authz.envoyconf import add_envoy_config_parser

    parser = _Parser(prog="authz", description="API security gateway for Envoy (ext_authz).")
    parser.add_argument("--version", action="version", version=f"authz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("validate", help="check a policy file; print every error with its location")
    p.add_argument("policy")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("serve", help="run the ext_authz service (gRPC and/or HTTP)")
    p.add_argument("policy")
    p.add_argument(
        "--grpc",
        type=_address,
        default=None,
        metavar="HOST:PORT",
        help=f"the ext_authz gRPC transport (default {DEFAULT_GRPC} unless only --http is given)",
    )
    p.add_argument(
        "--http",
        type=_http_address,
        default=None,
        metavar="[HOST:]PORT",
        help="the ext_authz HTTP transport (Envoy http_service, Istio envoyExtAuthzHttp); "
        "PORT alone binds 127.0.0.1, another address needs --http-secret-file",
    )
    h = p.add_argument_group(
        "HTTP transport",
        "Bounds, timeouts and trust of --http. Envoy sends every check whole and at once, "
        "so the defaults are generous for it and short for anything that trickles.",
    )
    h.add_argument(
        "--http-secret-file", metavar="FILE",
        help="refuse (403) checks without the x-authz-transport-secret header holding this "
        "file's secret (one line, >= 32 of A-Za-z0-9-._~+/=, e.g. `openssl rand -hex 32`); "
        "give the same file to `authz envoy-config --http-secret-file`",
    )  # fmt: skip
    h.add_argument(
        "--http-insecure-trust-network", action="store_true",
        help="bind a non-loopback --http address without a secret: only if nothing but "
        "Envoy can reach it, since whoever can may claim any peer identity",
    )  # fmt: skip
    h.add_argument(
        "--http-max-target-bytes", type=_whole(64, 16 * 1024 * 1024), metavar="BYTES",
        help="longest request target (/check + path + query): 414 above (default 16384)",
    )  # fmt: skip
    h.add_argument(
        "--http-max-head-bytes", type=_whole(1024, 16 * 1024 * 1024), metavar="BYTES",
        help="request line and headers together: 431 above (default 65536)",
    )  # fmt: skip
    h.add_argument(
        "--http-header-timeout", type=_duration, metavar="SECONDS",
        help="from a request's first byte to the end of its headers: 408 (default 10)",
    )  # fmt: skip
    h.add_argument(
        "--http-body-timeout", type=_duration, metavar="SECONDS",
        help="from the end of the headers to the end of the body: 408 (default 30)",
    )  # fmt: skip
    h.add_argument(
        "--http-idle-timeout", type=_duration, metavar="SECONDS",
        help="close a connection with no request for this long (default 75; keep it above "
        "the client pool's idle timeout, 30 s in the generated Envoy config)",
    )  # fmt: skip
    h.add_argument(
        "--http-max-connections", type=_whole(1, 1_000_000), metavar="N",
        help="open connections; new ones beyond are closed at once, with a log line "
        "(default 4096)",
    )  # fmt: skip
    p.add_argument("--workers", type=_workers, default=1, help="processes on one port")
    p.add_argument(
        "--decision-log",
        default="-",
        metavar="PATH",
        help="where decision records go: - (stdout, default), off, or a file",
    )
    p.add_argument(
        "--reload-interval",
        type=_positive,
        default=1.0,
        metavar="SECONDS",
        help="how often to check the policy file for changes (0: only on SIGHUP)",
    )
    p.add_argument(
        "--reload-settle",
        type=_positive,
        default=0.5,
        metavar="SECONDS",
        help="load a changed policy only once two reads this far apart agree (default 0.5)",
    )
    p.add_argument("--drain-timeout", type=_positive, default=10.0, metavar="SECONDS")
    p.add_argument(
        "--drain-delay",
        type=_positive,
        default=1.0,
        metavar="SECONDS",
        help="after SIGTERM, keep answering (health NOT_SERVING) while calls still arrive, "
        "up to this long, so callers move away before the port closes (default 1)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)
    serve = p

    p = sub.add_parser("check", help="send one request to a running service; print the decision")
    p.add_argument("url", help="the request URL, e.g. http://api.local/v1/orders?limit=5")
    p.add_argument(
        "-X", "--request", metavar="METHOD", help="method (default GET, POST with --data)"
    )
    p.add_argument(
        "-H", "--header", type=_parse_header, action="append", default=[], metavar="'NAME: VALUE'"
    )
    p.add_argument(
        "-d", "--data", metavar="DATA",
        help="request body, or @FILE (Content-Type application/json unless -H sets one)",
    )  # fmt: skip
    p.add_argument("--principal", help="the SPIFFE ID Envoy verified for the peer (mTLS)")
    p.add_argument("--cert", metavar="PEM", help="peer certificate Envoy forwards (mTLS)")
    p.add_argument("--source", default="127.0.0.1", help="client address Envoy saw")
    p.add_argument("--request-id", default="cli-check")
    p.add_argument("--server", type=_address, default="127.0.0.1:9191", metavar="HOST:PORT")
    p.add_argument("--timeout", type=_positive, default=5.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="print the whole response as JSON")
    p.set_defaults(func=cmd_check)

    from authz.control.commands import add_inventory_parser
    from authz.control.options import add_serve_arguments

    add_serve_arguments(serve)
    add_inventory_parser(sub)
    add_envoy_config_parser(sub)
    add_token_parser(sub)
    from authz.demo.stack import add_demo_parser

    add_demo_parser(sub)
    from authz.cli_explain import add_explain_parser
    from authz.cli_reasons import add_reasons_parser

    add_reasons_parser(sub)
    add_explain_parser(sub)
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
