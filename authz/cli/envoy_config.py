"""``authz envoy-config``: flags, options from flags, the reproducing command line in
the file's header, and writing the file (owner-only when it holds a secret)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any as AnyType

from authz.envoyconf.bootstrap import build_bootstrap, render_yaml
from authz.envoyconf.common import EnvoyConfigError
from authz.envoyconf.options import (
    TRANSPORTS,
    AuthzTlsOptions,
    EnvoyOptions,
    TlsOptions,
    parse_timeout,
)
from authz.envoyconf.tls import check_tls_files
from authz.policy.config import (
    PolicyConfig,
)
from authz.transport import envoy_http
from authz.units import parse_host_port


def _arg_type(parse: Callable[[str], object], what: str) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid {what}: {exc}") from None

    convert.__name__ = what
    return convert


_DEFAULTS = EnvoyOptions()


def _readable_file(text: str) -> str:
    try:
        with open(text, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {text}: {exc.strerror or exc}") from None
    return text


def register(subparsers: argparse._SubParsersAction[AnyType]) -> None:
    """Register ``envoy-config POLICY`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "envoy-config",
        help="print the Envoy bootstrap (YAML) that fronts this service for a policy",
        description="Generate an Envoy v3 bootstrap: ext_authz (fail closed) to the authz "
        "service, the policy's routes in specificity order, public routes without authz.",
    )
    p.add_argument("policy", metavar="POLICY", help="the policy file")
    hp = _arg_type(parse_host_port, "HOST:PORT")
    for name, what in (
        ("listen", "where Envoy listens"),
        ("upstream", "the protected service"),
        ("authz", "the authz service (its --grpc address, or --http with --transport http)"),
        ("admin", "Envoy's admin interface"),
    ):
        default = getattr(_DEFAULTS, name)
        p.add_argument(
            f"--{name}", type=hp, default=default, metavar="HOST:PORT",
            help=f"{what} (default {default})",
        )  # fmt: skip
    p.add_argument(
        "--timeout", type=_arg_type(parse_timeout, "duration"), default=_DEFAULTS.timeout,
        metavar="DURATION",
        help="how long Envoy waits for a decision before denying, e.g. 0.5s or 500ms "
        f"(default {_DEFAULTS.timeout:g}s)",
    )  # fmt: skip
    tls = p.add_argument_group(
        "downstream TLS",
        "Envoy terminates TLS; with --client-ca, mutual TLS: client certificates (SPIFFE "
        "X.509-SVIDs) are verified against the bundle and the verified identity is sent to "
        "the service (attributes.source.principal and .certificate). The paths are written "
        "into the config as given.",
    )
    readable = _arg_type(_readable_file, "file")
    tls.add_argument(
        "--tls-cert", type=readable, metavar="FILE",
        help="Envoy's certificate chain (PEM); needs --tls-key",
    )  # fmt: skip
    tls.add_argument("--tls-key", type=readable, metavar="FILE", help="its private key (PEM)")
    tls.add_argument(
        "--client-ca", type=readable, metavar="FILE",
        help="trust bundle (PEM) that client certificates must verify against",
    )  # fmt: skip
    tls.add_argument(
        "--client-cert", choices=("optional", "required"), default=None,
        help="with --client-ca: refuse clients without a certificate (required, the "
        "default) or let them through unauthenticated by TLS (optional); a certificate "
        "that does not verify is refused either way",
    )  # fmt: skip
    up = p.add_argument_group(
        "TLS to the service",
        "Envoy calls the service over TLS (`authz serve --tls-cert/--tls-key`); with "
        "--authz-tls-cert, mutual TLS (`authz serve --tls-client-ca`). The paths are "
        "written into the config as given.",
    )
    up.add_argument(
        "--authz-tls-ca", type=readable, metavar="FILE",
        help="trust bundle (PEM) the service's certificate must verify against",
    )  # fmt: skip
    up.add_argument(
        "--authz-tls-cert", type=readable, metavar="FILE",
        help="Envoy's client certificate (PEM) for the service; needs --authz-tls-key",
    )  # fmt: skip
    up.add_argument("--authz-tls-key", type=readable, metavar="FILE", help="its private key")
    up.add_argument(
        "--authz-tls-server-name", metavar="NAME",
        help="the DNS SAN the service's certificate must carry, also sent as SNI "
        "(default: the --authz host, as an IP or DNS SAN)",
    )  # fmt: skip
    p.add_argument(
        "--transport", choices=TRANSPORTS, default=_DEFAULTS.transport,
        help="how Envoy calls the service: grpc (ext_authz gRPC, `authz serve --grpc`) or "
        "http (ext_authz http_service, `authz serve --http`; --authz is then that port)",
    )  # fmt: skip
    p.add_argument(
        "--http-secret-file", type=readable, metavar="FILE",
        help="with --transport http: Envoy sends this file's secret on every check (the "
        "file `authz serve --http-secret-file` reads); the config then holds the secret",
    )  # fmt: skip
    p.add_argument(
        "--access-log", type=hp, default=None, metavar="HOST:PORT",
        help="also stream every request's access log (public routes included) to the "
        "service's access-log port (`authz serve --access-log-grpc HOST:PORT`): the "
        "upstream's status, size and latency, joined to each decision by its id",
    )  # fmt: skip
    p.add_argument(
        "--access-log-secret-file", type=readable, metavar="FILE",
        help="with --access-log: Envoy sends this file's secret on its access-log stream "
        "(the file `authz serve --access-log-secret-file` reads); the config then holds it",
    )  # fmt: skip
    p.add_argument(
        "--tracing", type=hp, default=None, metavar="HOST:PORT",
        help="Envoy traces every request (OpenTelemetry tracer) and sends its spans over "
        "OTLP gRPC to this collector, the one `authz serve --otlp-endpoint --tracing` "
        "exports to; Envoy propagates traceparent to ext_authz and the upstream",
    )  # fmt: skip
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=run)


def _tls_from_args(args: argparse.Namespace) -> TlsOptions | None:
    cert = getattr(args, "tls_cert", None)
    key = getattr(args, "tls_key", None)
    client_ca = getattr(args, "client_ca", None)
    client_cert = getattr(args, "client_cert", None)
    if cert is None and key is None:
        if client_ca is not None or client_cert is not None:
            flag = "--client-ca" if client_ca is not None else "--client-cert"
            raise EnvoyConfigError(f"{flag} needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise EnvoyConfigError("--tls-cert and --tls-key go together")
    if client_cert is not None and client_ca is None:
        raise EnvoyConfigError("--client-cert needs --client-ca (the bundle to verify against)")
    return TlsOptions(
        cert_chain=cert,
        private_key=key,
        client_ca=client_ca,
        require_client_cert=None if client_cert is None else client_cert == "required",
    )


def _authz_tls_from_args(args: argparse.Namespace) -> AuthzTlsOptions | None:
    ca = getattr(args, "authz_tls_ca", None)
    cert = getattr(args, "authz_tls_cert", None)
    key = getattr(args, "authz_tls_key", None)
    name = getattr(args, "authz_tls_server_name", None)
    if ca is None:
        if cert is not None or key is not None or name is not None:
            raise EnvoyConfigError("--authz-tls-cert/-key/-server-name need --authz-tls-ca")
        return None
    return AuthzTlsOptions(ca=ca, cert_chain=cert, private_key=key, server_name=name)


def _secret_from_args(args: argparse.Namespace) -> str | None:
    path = getattr(args, "http_secret_file", None)
    if path is None:
        return None
    if getattr(args, "transport", _DEFAULTS.transport) != "http":
        raise EnvoyConfigError("--http-secret-file needs --transport http")
    try:
        return envoy_http.read_secret_file(path)
    except ValueError as exc:
        raise EnvoyConfigError(f"--http-secret-file {exc}") from None


def options_from_args(args: argparse.Namespace) -> EnvoyOptions:
    """EnvoyOptions from parsed arguments; EnvoyConfigError for combinations that make no sense."""
    return EnvoyOptions(
        listen=args.listen,
        upstream=args.upstream,
        authz=args.authz,
        admin=args.admin,
        timeout=args.timeout,
        tls=_tls_from_args(args),
        transport=getattr(args, "transport", _DEFAULTS.transport),
        http_secret=_secret_from_args(args),
        access_log=getattr(args, "access_log", None),
        access_log_secret=_access_log_secret(args),
        tracing=getattr(args, "tracing", None),
        authz_tls=_authz_tls_from_args(args),
    )


def _access_log_secret(args: argparse.Namespace) -> str | None:
    path = getattr(args, "access_log_secret_file", None)
    if path is None:
        return None
    if getattr(args, "access_log", None) is None:
        raise EnvoyConfigError("--access-log-secret-file needs --access-log")
    try:
        return envoy_http.read_secret_file(path)
    except ValueError as exc:
        raise EnvoyConfigError(f"--access-log-secret-file {exc}") from None


def command_line(args: argparse.Namespace) -> str:
    """The shortest ``authz envoy-config`` command that reproduces ``args``."""
    parts = ["authz", "envoy-config", args.policy]
    opts = options_from_args(args)
    for name in ("listen", "upstream", "authz", "admin"):
        value = getattr(opts, name)
        if value != getattr(_DEFAULTS, name):
            parts += [f"--{name}", str(value)]
    if opts.timeout != _DEFAULTS.timeout:
        parts += ["--timeout", f"{opts.timeout:g}s"]
    if opts.transport != _DEFAULTS.transport:
        parts += ["--transport", opts.transport]
    if opts.http_secret is not None:
        parts += ["--http-secret-file", args.http_secret_file]
    if opts.access_log is not None:
        parts += ["--access-log", str(opts.access_log)]
    if opts.access_log_secret is not None:
        parts += ["--access-log-secret-file", args.access_log_secret_file]
    if opts.tracing is not None:
        parts += ["--tracing", str(opts.tracing)]
    if opts.tls is not None:
        parts += ["--tls-cert", opts.tls.cert_chain, "--tls-key", opts.tls.private_key]
        if opts.tls.client_ca is not None:
            parts += ["--client-ca", opts.tls.client_ca]
            if not opts.tls.require_client_cert:
                parts += ["--client-cert", "optional"]
    if opts.authz_tls is not None:
        parts += ["--authz-tls-ca", opts.authz_tls.ca]
        if opts.authz_tls.cert_chain is not None and opts.authz_tls.private_key is not None:
            parts += ["--authz-tls-cert", opts.authz_tls.cert_chain]
            parts += ["--authz-tls-key", opts.authz_tls.private_key]
        if opts.authz_tls.server_name is not None:
            parts += ["--authz-tls-server-name", opts.authz_tls.server_name]
    if args.output:
        parts += ["-o", args.output]
    return " ".join(parts)


def generate(policy: PolicyConfig, args: argparse.Namespace) -> str:
    """The file ``authz envoy-config`` writes for these arguments."""
    options = options_from_args(args)
    header = (
        f"Envoy v3 bootstrap generated by `authz envoy-config` from {args.policy}\n"
        f"(policy version {policy.version}). Do not edit; regenerate with:\n"
        f"  {command_line(args)}\n"
        f"Check with: envoy --mode validate -c {args.output or 'FILE'}\n"
    )
    if options.http_secret is not None:
        header += "It holds the HTTP transport secret: keep it as private as that file.\n"
    if options.access_log_secret is not None:
        header += "It holds the access-log secret: keep it as private as that file.\n"
    return render_yaml(build_bootstrap(policy, options), header=header)


def run(args: argparse.Namespace) -> int:
    """``authz envoy-config``: 0 on success, 1 when the policy or output is unusable,
    2 when the options are (e.g. a TLS file that is missing or not what it should be)."""
    from authz.errors import PolicyError
    from authz.policy.loader import load_policy

    try:
        options = options_from_args(args)
        if options.tls is not None:
            check_tls_files(options.tls)
        if options.authz_tls is not None and options.authz_tls.cert_chain is not None:
            assert options.authz_tls.private_key is not None
            check_tls_files(TlsOptions(options.authz_tls.cert_chain, options.authz_tls.private_key))
    except EnvoyConfigError as exc:
        print(f"authz envoy-config: error: {exc}", file=sys.stderr)
        return 2
    try:
        policy: PolicyConfig = load_policy(args.policy)
    except PolicyError as exc:
        for location, message in exc.problems:
            print(f"{location}: {message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.policy}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        text = generate(policy, args)
    except EnvoyConfigError as exc:
        print(f"{args.policy}: {exc}", file=sys.stderr)
        return 1
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    try:
        tmp = out.with_name(f".{out.name}.tmp")
        # A config holding the transport secret is readable by its owner only.
        secret = getattr(args, "http_secret_file", None) or getattr(
            args, "access_log_secret_file", None
        )
        mode = 0o600 if secret else 0o644
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        tmp.replace(out)
    except OSError as exc:
        print(f"{args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m authz.cli.envoy_config POLICY ...``: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog="authz")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["envoy-config", *(sys.argv[1:] if argv is None else argv)])
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
