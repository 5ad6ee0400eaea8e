"""The control plane's command-line options: ``authz serve --control ...`` and the
client flags of ``authz inventory`` / ``authz explain --control``.

Kept here so that ``authz/cli`` adds them with one call each
(:func:`add_serve_arguments`, :func:`options_from_args`, :func:`add_client_arguments`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from authz.transport.envoy_http import is_loopback
from authz.units import parse_host_port

#: Where the control plane listens unless told otherwise.
DEFAULT_CONTROL = "127.0.0.1:9193"


@dataclass(frozen=True, slots=True)
class ControlOptions:
    """How ``authz serve`` runs its control plane (see :mod:`authz.control`)."""

    #: HOST:PORT, or None: no control plane
    address: str | None = DEFAULT_CONTROL
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    #: a worker of ``--workers N``: serve Admin, unauthenticated, on this unix socket
    #: (in a 0700 directory the supervisor made) instead of ``address``
    worker_socket: str | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None or self.worker_socket is not None

    def check(self) -> None:
        """Raise ValueError when the flags do not go together (the CLI exits 2)."""
        if self.address is None:
            given = [f for f, v in self._auth_flags() if v is not None]
            if given:
                raise ValueError(f"{given[0]} needs a control plane (--control is off)")
            return
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--control-tls-cert and --control-tls-key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("--control-client-ca needs --control-tls-cert/--control-tls-key")
        if self.worker_socket is not None:
            return
        host = parse_host_port(self.address, port_zero=True).host
        if is_loopback(host) or self.token_file or self.client_ca:
            return
        raise ValueError(
            f"--control {self.address}: {host} is not a loopback address, and the control "
            "plane (inventory, explain) must authenticate its callers: give "
            "--control-token-file FILE, or --control-tls-cert/--control-tls-key with "
            "--control-client-ca (mTLS), or bind 127.0.0.1 (or --control off)"
        )

    def _auth_flags(self) -> list[tuple[str, str | None]]:
        return [
            ("--control-token-file", self.token_file),
            ("--control-tls-cert", self.tls_cert),
            ("--control-tls-key", self.tls_key),
            ("--control-client-ca", self.client_ca),
        ]

    def argv(self) -> list[str]:
        """The flags that give another ``authz serve`` the same control options."""
        out = ["--control", self.address or "off"]
        for flag, value in self._auth_flags():
            if value is not None:
                out += [flag, value]
        return out


#: No control plane (what :class:`authz.serve_options.ServeOptions` has unless given one).
CONTROL_OFF = ControlOptions(address=None)


def _control_address(value: str) -> str | None:
    if value == "off":
        return None
    try:
        parse_host_port(value, port_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT or off, got {value!r} ({exc})"
        ) from None
    return value


def _client_address(value: str) -> str:
    try:
        parse_host_port(value, port_zero=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r} ({exc})") from None
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """``authz serve``'s control-plane flags (one argument group)."""
    g = parser.add_argument_group(
        "control plane",
        "authz.v1.Admin (inventory, explain, counters), gRPC health and reflection on a "
        "port of its own. Every call but health must authenticate: a client certificate "
        "signed by --control-client-ca, or the bearer token of --control-token-file. On a "
        "loopback address with neither, a random token is written to "
        "$XDG_RUNTIME_DIR/authz/control-PORT.token (0600), where `authz inventory` and "
        "`authz explain --control` find it; any other address without either is refused.",
    )
    g.add_argument(
        "--control", type=_control_address, default=DEFAULT_CONTROL, metavar="HOST:PORT|off",
        help=f"where the control plane listens (default {DEFAULT_CONTROL}; off: none)",
    )  # fmt: skip
    g.add_argument(
        "--control-token-file", metavar="FILE",
        help="callers send `authorization: Bearer TOKEN` with this file's token (one line, "
        ">= 32 of A-Za-z0-9-._~+/=); re-read when the file changes",
    )  # fmt: skip
    g.add_argument("--control-tls-cert", metavar="PEM", help="serve the control plane over TLS")
    g.add_argument("--control-tls-key", metavar="PEM")
    g.add_argument(
        "--control-client-ca", metavar="PEM",
        help="require a client certificate signed by this CA (mTLS); the caller is its "
        "URI SAN (SPIFFE ID) or subject",
    )  # fmt: skip
    g.add_argument("--control-worker-socket", metavar="PATH", help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> ControlOptions:
    """The :class:`ControlOptions` of parsed ``authz serve`` arguments (ValueError:
    flags that do not go together, or a non-loopback address without credentials)."""
    options = ControlOptions(
        address=None if args.control_worker_socket else args.control,
        token_file=args.control_token_file,
        tls_cert=args.control_tls_cert,
        tls_key=args.control_tls_key,
        client_ca=args.control_client_ca,
        worker_socket=args.control_worker_socket,
    )
    options.check()
    return options


def add_client_arguments(parser: argparse._ActionsContainer, *, required: bool) -> None:
    """How a command reaches the control plane: address and credentials."""
    parser.add_argument(
        "--control", type=_client_address, metavar="HOST:PORT",
        default=DEFAULT_CONTROL if required else None,
        help="the service's control plane"
        + (f" (default {DEFAULT_CONTROL})" if required else ": explain there, not locally"),
    )  # fmt: skip
    parser.add_argument(
        "--token-file", metavar="FILE",
        help="bearer token (default: for a loopback --control, the token the service wrote "
        "to $XDG_RUNTIME_DIR/authz/control-PORT.token)",
    )  # fmt: skip
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate (mTLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="its private key")
    parser.add_argument(
        "--ca", metavar="PEM", help="CA that signed the control plane's certificate (TLS)"
    )
    parser.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS")


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not 0 < number < 86400:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 86400, got {value!r}")
    return number


def client_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`authz.control.client.connect` from the client flags."""
    return {
        "address": args.control,
        "token_file": args.token_file,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "ca": args.ca,
    }
