"""The one duration parser and the one address parser of the package.

Each raises ValueError (a subclass saying which kind of problem) with a message that
names the text; callers add where it came from: a policy location
(:mod:`authz.policy.loader`) or an argparse error (the command line).

Durations: ``NUMBER[UNIT]``, NUMBER a decimal (``5``, ``0.5``, ``.5``, ``5.``), UNIT
one of ``ms s m h d``; no unit means seconds unless the caller requires one.
Whitespace around the text is ignored; signs, exponents, ``nan`` and ``inf`` are not
durations. Each caller gives its range and the units it accepts.

Addresses: ``HOST:PORT``, HOST a DNS name or IPv4 address, or ``[IPV6]:PORT``
(:func:`parse_host_port`, for flags and configuration), and the host of a request's
Host header (:func:`authority_host`, for routing).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Collection
from dataclasses import dataclass

UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*")
_DNS_NAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class DurationSyntaxError(ValueError):
    """The text is not a duration at all."""


class DurationRangeError(ValueError):
    """A duration, but outside what the caller accepts."""


def _seconds_text(value: float) -> str:
    return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"


_NOT_FINITE = frozenset({"nan", "inf", "infinity", "+inf", "-inf"})


def parse_duration(
    text: str | float,
    *,
    minimum: float = 0.0,
    maximum: float = math.inf,
    units: Collection[str] = tuple(UNITS),
    unit_required: bool = False,
) -> float:
    """Seconds from ``text`` (or a number of seconds); raises a ValueError subclass."""
    if isinstance(text, bool):
        raise DurationSyntaxError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        seconds = float(text)
        if not math.isfinite(seconds):
            raise DurationRangeError(f"{text!r} is not a finite duration")
    else:
        m = _DURATION_RE.fullmatch(text)
        unit = m.group(2) if m else ""
        if m is None or (unit and unit not in units) or (unit_required and not unit):
            if text.strip().lower() in _NOT_FINITE:  # a number, but never a duration
                raise DurationRangeError(f"{text!r} is not a finite duration")
            example = "0.5s or 500ms" if set(units) <= {"ms", "s"} else "30s, 5m or 500ms"
            raise DurationSyntaxError(f"{text!r} is not a duration such as {example}")
        seconds = float(m.group(1)) * (UNITS[unit] if unit else 1.0)
    if not minimum <= seconds <= maximum:
        if maximum == math.inf:
            raise DurationRangeError(f"{text!r} is less than {_seconds_text(minimum)}")
        raise DurationRangeError(
            f"{text!r} is not between {_seconds_text(minimum)} and {_seconds_text(maximum)}"
        )
    return seconds


@dataclass(frozen=True, slots=True)
class HostPort:
    """A parsed ``HOST:PORT``."""

    host: str  # a DNS name, an IPv4 address or a bare IPv6 address (no brackets)
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def is_dns_name(text: str) -> bool:
    """A host name (RFC 1123 labels, 253 characters at most)."""
    return _DNS_NAME_RE.match(text) is not None


def parse_host_port(text: str, *, port_zero: bool = False) -> HostPort:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); raises ValueError saying what is wrong.

    ``port_zero``: accept port 0 (a listener on a port the system picks).
    """
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [IPV6]:PORT")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, [ADDR]:PORT")
        if not is_dns_name(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    low = 0 if port_zero else 1
    if not port_text.isascii() or not port_text.isdigit() or not low <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from {low} to 65535")
    return HostPort(host, int(port_text))


def authority_host(authority: str) -> str:
    """The host of a request's Host/:authority, lower-case, without any port:
    ``API.example.com:8443`` -> ``api.example.com``; ``[::1]:80`` -> ``[::1]``.

    Lenient on purpose (a request's header, not configuration): it never raises, and
    whatever it returns is only compared with the host names a policy declares.
    """
    name = authority.lower()
    if name.startswith("["):
        return name.split("]", 1)[0] + "]"
    return name.rsplit(":", 1)[0] if ":" in name else name
