"""``authz serve``'s telemetry flags: the Prometheus scrape endpoint and OpenTelemetry
(OTLP gRPC) traces, metrics and logs.

Kept here so that :mod:`authz.cli.serve` adds them with one call each
(:func:`add_serve_arguments`, :func:`options_from_args`) and the supervisor of
``--workers N`` hands the same OTLP flags to every worker (:meth:`TelemetryOptions.worker_argv`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from authz.transport.envoy_http import is_loopback
from authz.units import parse_host_port

#: Prometheus's default scrape timeout is 10 s; the OTel SDK's default export interval is 60 s.
DEFAULT_OTLP_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class TelemetryOptions:
    """What ``authz serve`` exports besides the decision log (see :mod:`authz.telemetry`)."""

    #: HOST:PORT of ``GET /metrics``, or None: no scrape endpoint
    metrics: str | None = None
    #: scrapers send ``authorization: Bearer TOKEN`` with this file's token
    metrics_token_file: str | None = None
    #: bind a non-loopback ``metrics`` address without a token
    metrics_insecure_open: bool = False
    #: the OTLP gRPC collector (``http://HOST:PORT`` plaintext, ``https://`` TLS); alone,
    #: where a policy's ``telemetry.tracing`` sends its spans
    otlp_endpoint: str | None = None
    tracing: bool = False
    #: head sampling: the share of new traces (no parent) that are recorded
    trace_ratio: float = 1.0
    #: a parent's sampled flag decides (W3C ``traceparent`` / B3 from Envoy)
    trace_parent_based: bool = True
    otlp_metrics: bool = False
    otlp_metrics_interval: float = DEFAULT_OTLP_INTERVAL
    otlp_logs: bool = False
    service_name: str = "authz"
    #: a worker of ``--workers N`` whose supervisor serves ``--metrics``: count the
    #: decision metrics (for the merge), serve none
    metrics_for_supervisor: bool = False

    @property
    def counting(self) -> bool:
        """Whether the decision metrics are counted (someone reads them)."""
        return self.metrics is not None or self.metrics_for_supervisor or self.otlp_metrics

    @property
    def any_otlp(self) -> bool:
        return self.tracing or self.otlp_metrics or self.otlp_logs

    @property
    def enabled(self) -> bool:
        return self.metrics is not None or self.any_otlp

    def check(self) -> None:
        """Raise ValueError when the flags do not go together (the CLI exits 2)."""
        if self.any_otlp and self.otlp_endpoint is None:
            flag = "--tracing" if self.tracing else "--otlp-metrics" if self.otlp_metrics else (
                "--otlp-logs"
            )  # fmt: skip
            raise ValueError(f"{flag} needs --otlp-endpoint URL (the collector's OTLP gRPC port)")
        if not 0.0 <= self.trace_ratio <= 1.0:
            raise ValueError(f"--trace-sampling {self.trace_ratio}: expected 0 to 1")
        if self.metrics is None:
            if self.metrics_token_file or self.metrics_insecure_open:
                raise ValueError("--metrics-token-file/--metrics-insecure-open need --metrics")
            return
        if self.metrics_token_file is not None:
            read_token(self.metrics_token_file)
            if self.metrics_insecure_open:
                raise ValueError("--metrics-insecure-open makes no sense with a token")
            return
        host = parse_host_port(self.metrics, port_zero=True).host
        if not is_loopback(host) and not self.metrics_insecure_open:
            raise ValueError(
                f"--metrics {self.metrics}: {host} is not a loopback address; give "
                "--metrics-token-file FILE (Prometheus: authorization.credentials_file), "
                "bind 127.0.0.1, or add --metrics-insecure-open if only the scraper can "
                "reach it"
            )

    def worker_argv(self) -> list[str]:
        """The OTLP flags that give a worker of ``--workers N`` the same exports (the
        scrape endpoint is the supervisor's: it merges the workers' metrics)."""
        argv = ["--metrics-for-supervisor"] if self.metrics is not None else []
        if self.otlp_endpoint is None:
            return argv
        # (an endpoint alone: tracing the policy's telemetry.tracing turns on)
        argv += ["--otlp-endpoint", self.otlp_endpoint, "--service-name", self.service_name]
        if self.tracing:
            argv += ["--tracing", "--trace-sampling", repr(self.trace_ratio)]
            if not self.trace_parent_based:
                argv.append("--no-trace-parent-based")
        if self.otlp_metrics:
            argv += ["--otlp-metrics", "--otlp-metrics-interval", repr(self.otlp_metrics_interval)]
        if self.otlp_logs:
            argv.append("--otlp-logs")
        return argv


#: No telemetry beyond the decision log (what ServeOptions has unless given some).
TELEMETRY_OFF = TelemetryOptions()


def read_token(path: str) -> str:
    """The bearer token in ``path`` (one line, at least 32 characters)."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"--metrics-token-file {path}: {exc.strerror or exc}") from None
    if len(token) < 32 or any(c.isspace() for c in token):
        raise ValueError(f"--metrics-token-file {path}: expected one token of >= 32 characters")
    return token


def _endpoint(value: str) -> str:
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
        raise argparse.ArgumentTypeError(
            f"expected http://HOST:PORT (plaintext) or https://HOST:PORT, got {value!r}"
        )
    return value


def _ratio(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ratio from 0 to 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a ratio from 0 to 1, got {value!r}")
    return number


def _interval(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not 0.1 <= number <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0.1 to 3600 seconds, got {value!r}")
    return number


def _address(value: str) -> str:
    try:
        parse_host_port(value, port_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r} ({exc})") from None
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """``authz serve``'s telemetry flags (one argument group)."""
    g = parser.add_argument_group(
        "telemetry",
        "Prometheus scrape endpoint and OpenTelemetry export (OTLP gRPC). Off by default; "
        "see the README's Observability section.",
    )
    g.add_argument(
        "--metrics", type=_address, metavar="HOST:PORT",
        help="serve GET /metrics (Prometheus text) here; open on loopback, elsewhere it "
        "needs --metrics-token-file (with --workers N: the supervisor's, every worker merged)",
    )  # fmt: skip
    g.add_argument(
        "--metrics-token-file", metavar="FILE",
        help="scrapers send `authorization: Bearer TOKEN` with this file's token",
    )  # fmt: skip
    g.add_argument(
        "--metrics-insecure-open", action="store_true",
        help="bind a non-loopback --metrics address without a token",
    )  # fmt: skip
    g.add_argument(
        "--otlp-endpoint", type=_endpoint, metavar="URL",
        help="the OpenTelemetry collector's OTLP gRPC port (http://HOST:4317)",
    )  # fmt: skip
    g.add_argument(
        "--tracing", action="store_true",
        help="a span per decision, child of Envoy's trace context, an event per stage",
    )  # fmt: skip
    g.add_argument(
        "--trace-sampling", type=_ratio, default=1.0, metavar="RATIO",
        help="share of new traces recorded (default 1); with a parent, its flag decides",
    )  # fmt: skip
    g.add_argument(
        "--no-trace-parent-based", dest="trace_parent_based", action="store_false",
        help="apply --trace-sampling to every decision, ignoring the parent's sampled flag",
    )  # fmt: skip
    g.add_argument("--otlp-metrics", action="store_true", help="export the metrics over OTLP too")
    g.add_argument(
        "--otlp-metrics-interval", type=_interval, default=DEFAULT_OTLP_INTERVAL,
        metavar="SECONDS", help=f"how often (default {DEFAULT_OTLP_INTERVAL:g})",
    )  # fmt: skip
    g.add_argument(
        "--otlp-logs", action="store_true",
        help="send every decision record as an OTLP log record too (trace and span ids)",
    )  # fmt: skip
    g.add_argument("--service-name", default="authz", help="OTel service.name (default authz)")
    g.add_argument("--metrics-for-supervisor", action="store_true", help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> TelemetryOptions:
    """The :class:`TelemetryOptions` of parsed ``authz serve`` arguments (ValueError:
    flags that do not go together)."""
    options = TelemetryOptions(
        metrics=args.metrics,
        metrics_token_file=args.metrics_token_file,
        metrics_insecure_open=args.metrics_insecure_open,
        otlp_endpoint=args.otlp_endpoint,
        tracing=args.tracing,
        trace_ratio=args.trace_sampling,
        trace_parent_based=args.trace_parent_based,
        otlp_metrics=args.otlp_metrics,
        otlp_metrics_interval=args.otlp_metrics_interval,
        otlp_logs=args.otlp_logs,
        service_name=args.service_name,
        metrics_for_supervisor=args.metrics_for_supervisor,
    )
    options.check()
    return options
