"""Argument types every command shares: addresses, durations, counts, headers, and a
parser whose usage errors name the command and exit 2 without a traceback."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from authz.units import DurationRangeError, DurationSyntaxError, parse_duration, parse_host_port


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error names the command and exits 2 without a traceback."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def address(value: str) -> str:
    """HOST:PORT or [IPV6]:PORT (port 0: one the system picks), kept as given."""
    try:
        parse_host_port(value, port_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r} ({exc})") from None
    return value


def http_address(value: str) -> str:
    """``--http``: HOST:PORT, or PORT / :PORT for 127.0.0.1:PORT (loopback by default)."""
    text = value[1:] if value.startswith(":") else value
    if text.isdigit():
        if int(text) > 65535:
            raise argparse.ArgumentTypeError(f"port {text} is not from 0 to 65535")
        return f"127.0.0.1:{int(text)}"
    try:
        return address(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT, got {value!r} (PORT or :PORT alone means 127.0.0.1:PORT)"
        ) from None


def whole(low: int, high: int) -> Any:
    def convert(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {value!r}"
            )
        return int(value)

    convert.__name__ = "number"
    return convert


def duration(value: str) -> float:
    """Seconds (``5``, ``0.5``; a unit such as ``500ms`` or ``2m`` also works), 0.01 to 1 day."""
    try:
        return parse_duration(value, minimum=0.01, maximum=86400)
    except DurationSyntaxError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    except DurationRangeError:  # also nan and inf
        raise argparse.ArgumentTypeError(
            f"expected seconds from 0.01 to 86400, got {value!r}"
        ) from None


def positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        # nan compares false with everything and inf never elapses: both would
        # silently disable the timer they configure
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value!r}")
    return number


def workers(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip().lower(), val.strip()
