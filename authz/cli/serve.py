"""``authz serve POLICY``: run the ext_authz service (gRPC and/or HTTP transports), with
the flags that bound the HTTP transport and pace reloads and drains."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from authz.cli import args as A
from authz.units import parse_host_port

DEFAULT_GRPC = "0.0.0.0:9191"


def cmd_serve(args: argparse.Namespace) -> int:
    from authz.control.options import options_from_args
    from authz.serve_options import ServeOptions
    from authz.server import run_service
    from authz.telemetry.options import options_from_args as telemetry_options

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    grpc = args.grpc
    if grpc is None and args.http is None:
        grpc = DEFAULT_GRPC  # no transport named: gRPC, as before
    try:
        limits = http_options(args)
        control = options_from_args(args)
        telemetry = telemetry_options(args)
        access_log_options(args)
        tls = tls_options(args)
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
            policy_history=args.policy_history,
            drain_timeout=args.drain_timeout,
            drain_delay=args.drain_delay,
            reuse_port=args.reuse_port or args.workers > 1,
            control=control,
            access_log_grpc=args.access_log_grpc,
            access_log_secret_file=args.access_log_secret_file,
            access_log_trust_network=args.access_log_insecure_trust_network,
            telemetry=telemetry,
            tls=tls,
        )
    )


def tls_options(args: argparse.Namespace) -> Any:
    """The ``--tls-*`` files, checked now (ValueError saying what is wrong), or None."""
    from authz.transport.tls import TlsFiles, load

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        if args.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert/--tls-key")
        return None
    files = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    load(files)  # TlsConfigError is a ValueError naming the file
    return files


def http_options(args: argparse.Namespace) -> Any:
    """The HTTP transport's limits from the ``--http-*`` flags, after checking that
    they go together and that the transport may bind where ``--http`` says."""
    from authz.transport.envoy_http import is_loopback, read_secret_file
    from authz.transport.http_wire import HttpLimits

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
    trusted = (
        args.http_secret_file is not None
        or args.http_insecure_trust_network
        or (args.tls_client_ca is not None and args.tls_cert is not None)  # mTLS: only Envoy
    )
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


def access_log_options(args: argparse.Namespace) -> None:
    """Check the ``--access-log-*`` flags go together and may bind where they say
    (ValueError saying what is wrong)."""
    from authz.transport.als_server import check_exposure
    from authz.transport.envoy_http import read_secret_file

    if args.access_log_grpc is None:
        for flag in ("access_log_secret_file", "access_log_insecure_trust_network"):
            if getattr(args, flag) not in (None, False):
                raise ValueError(f"--{flag.replace('_', '-')} needs --access-log-grpc")
        return
    secret = None
    if args.access_log_secret_file is not None:
        secret = read_secret_file(args.access_log_secret_file)  # fail now, saying why
        if args.access_log_insecure_trust_network:
            raise ValueError("--access-log-insecure-trust-network makes no sense with a secret")
    check_exposure(args.access_log_grpc, secret, args.access_log_insecure_trust_network)


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


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the ext_authz service (gRPC and/or HTTP)")
    p.add_argument("policy")
    p.add_argument(
        "--grpc",
        type=A.address,
        default=None,
        metavar="HOST:PORT",
        help=f"the ext_authz gRPC transport (default {DEFAULT_GRPC} unless only --http is given)",
    )
    p.add_argument(
        "--http",
        type=A.http_address,
        default=None,
        metavar="[HOST:]PORT",
        help="the ext_authz HTTP transport (Envoy http_service, Istio envoyExtAuthzHttp); "
        "PORT alone binds 127.0.0.1, another address needs --http-secret-file",
    )
    t = p.add_argument_group(
        "TLS",
        "Serve the gRPC and HTTP transports over TLS (reloaded when the files change); "
        "with --tls-client-ca, a client certificate (Envoy's) is required: give Envoy "
        "its certificate with `authz envoy-config --authz-tls-ca/--authz-tls-cert`.",
    )
    t.add_argument("--tls-cert", metavar="PEM", help="the service's certificate chain")
    t.add_argument("--tls-key", metavar="PEM", help="its private key (unencrypted)")
    t.add_argument(
        "--tls-client-ca", metavar="PEM",
        help="require a client certificate that chains to this bundle (mTLS with Envoy)",
    )  # fmt: skip
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
        "--http-max-target-bytes", type=A.whole(64, 16 * 1024 * 1024), metavar="BYTES",
        help="longest request target (/check + path + query): 414 above (default 16384)",
    )  # fmt: skip
    h.add_argument(
        "--http-max-head-bytes", type=A.whole(1024, 16 * 1024 * 1024), metavar="BYTES",
        help="request line and headers together: 431 above (default 65536)",
    )  # fmt: skip
    h.add_argument(
        "--http-header-timeout", type=A.duration, metavar="SECONDS",
        help="from a request's first byte to the end of its headers: 408 (default 10)",
    )  # fmt: skip
    h.add_argument(
        "--http-body-timeout", type=A.duration, metavar="SECONDS",
        help="from the end of the headers to the end of the body: 408 (default 30)",
    )  # fmt: skip
    h.add_argument(
        "--http-idle-timeout", type=A.duration, metavar="SECONDS",
        help="close a connection with no request for this long (default 75; keep it above "
        "the client pool's idle timeout, 30 s in the generated Envoy config)",
    )  # fmt: skip
    h.add_argument(
        "--http-max-connections", type=A.whole(1, 1_000_000), metavar="N",
        help="open connections; new ones beyond are closed at once, with a log line "
        "(default 4096)",
    )  # fmt: skip
    a = p.add_argument_group(
        "Envoy's access log",
        "Response feedback: the upstream's status, size and latency of every request "
        "(public routes too), joined to its decision by id, for detection and adaptive "
        "shedding. Give the same address to `authz envoy-config --access-log`.",
    )
    a.add_argument(
        "--access-log-grpc", type=A.address, default=None, metavar="HOST:PORT",
        help="serve envoy.service.accesslog.v3.AccessLogService here (off by default); "
        "beyond loopback it needs --access-log-secret-file",
    )  # fmt: skip
    a.add_argument(
        "--access-log-secret-file", metavar="FILE",
        help="refuse access-log streams without this file's secret (Envoy sends it when "
        "given `authz envoy-config --access-log-secret-file` with the same file)",
    )  # fmt: skip
    a.add_argument(
        "--access-log-insecure-trust-network", action="store_true",
        help="bind a non-loopback --access-log-grpc address without a secret: only if "
        "nothing but Envoy can reach it (forged entries would feed the detectors)",
    )  # fmt: skip
    p.add_argument("--workers", type=A.workers, default=1, help="processes on one port")
    p.add_argument(
        "--decision-log",
        default="-",
        metavar="PATH",
        help="where decision records go: - (stdout, default), off, or a file",
    )
    p.add_argument(
        "--reload-interval",
        type=A.positive,
        default=1.0,
        metavar="SECONDS",
        help="how often to check the policy file for changes (0: only on SIGHUP)",
    )
    p.add_argument(
        "--reload-settle",
        type=A.positive,
        default=0.5,
        metavar="SECONDS",
        help="load a changed policy only once two reads this far apart agree (default 0.5)",
    )
    p.add_argument(
        "--policy-history", type=_history, default=5, metavar="K",
        help="policy versions kept for `authz policy rollback` (1 to 100, default 5)",
    )  # fmt: skip
    p.add_argument("--drain-timeout", type=A.positive, default=10.0, metavar="SECONDS")
    p.add_argument(
        "--drain-delay",
        type=A.positive,
        default=1.0,
        metavar="SECONDS",
        help="after SIGTERM, keep answering (health NOT_SERVING) while calls still arrive, "
        "up to this long, so callers move away before the port closes (default 1)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    from authz.control.options import add_serve_arguments

    add_serve_arguments(p)
    from authz.telemetry.options import add_serve_arguments as add_telemetry_arguments

    add_telemetry_arguments(p)
    p.set_defaults(func=cmd_serve)


def _history(value: str) -> int:
    from authz.policy.history import MAX_CAPACITY

    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if not 1 <= number <= MAX_CAPACITY:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_CAPACITY}, got {value!r}")
    return number
