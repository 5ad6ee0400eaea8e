"""authz.units: the one duration parser and the one address parser, every form."""

from __future__ import annotations

import argparse
import math

import pytest

from authz.units import (
    DurationRangeError,
    DurationSyntaxError,
    HostPort,
    authority_host,
    parse_duration,
    parse_host_port,
)

# ----------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5", 5.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("5.", 5.0),
        (" 2 ", 2.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("250 ms", 0.25),
        ("0", 0.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_duration_accepted(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", " ", "s", "soon", "-1", "-1s", "+1s", "1e3", "1x", "1S", "1 s s", "1..2", "0x10"]
)
def test_duration_refused_forms(text: str) -> None:
    with pytest.raises(DurationSyntaxError, match="is not a duration such as"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "Infinity", math.nan, math.inf])
def test_duration_not_finite_is_a_range_error(text: str | float) -> None:
    with pytest.raises(DurationRangeError, match="not a finite duration"):
        parse_duration(text)


def test_duration_bool_is_not_a_number_of_seconds() -> None:
    with pytest.raises(DurationSyntaxError):
        parse_duration(True)


def test_duration_range() -> None:
    assert parse_duration("1ms", minimum=0.001, maximum=60) == 0.001
    assert parse_duration("60s", minimum=0.001, maximum=60) == 60.0
    with pytest.raises(DurationRangeError, match=r"'61s' is not between 1ms and 60s"):
        parse_duration("61s", minimum=0.001, maximum=60)
    with pytest.raises(DurationRangeError, match=r"'0s' is not between 1ms and 60s"):
        parse_duration("0s", minimum=0.001, maximum=60)
    with pytest.raises(DurationRangeError, match=r"is less than 10ms"):
        parse_duration("0.001", minimum=0.01)


def test_duration_units_and_required_unit() -> None:
    with pytest.raises(DurationSyntaxError, match=r"such as 0\.5s or 500ms"):
        parse_duration("1h", units=("ms", "s"))
    assert parse_duration("1h") == 3600.0
    with pytest.raises(DurationSyntaxError):
        parse_duration("5", unit_required=True)
    assert parse_duration(5, unit_required=True) == 5.0  # a number is seconds


def test_duration_errors_are_value_errors() -> None:
    # callers that only know ValueError (policy loaders, argparse types) still catch them
    assert issubclass(DurationSyntaxError, ValueError)
    assert issubclass(DurationRangeError, ValueError)


def test_policy_and_flag_wrappers_keep_their_messages() -> None:
    from authz.cli.args import duration as _duration
    from authz.envoyconf import parse_timeout
    from authz.policy.document import parse_duration as policy_duration

    assert policy_duration("30s") == 30.0
    assert policy_duration(2) == 2.0
    with pytest.raises(ValueError, match=r"^invalid duration '30'$"):
        policy_duration("30")  # the schema's form needs a unit
    assert _duration("0.5") == 0.5
    assert _duration("500ms") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected seconds, got 'soon'$"):
        _duration("soon")
    with pytest.raises(argparse.ArgumentTypeError, match=r"from 0\.01 to 86400, got 'nan'"):
        _duration("nan")
    assert parse_timeout("250ms") == 0.25
    with pytest.raises(ValueError, match=r"^'fast' is not a duration such as 0.5s or 500ms$"):
        parse_timeout("fast")


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", HostPort("127.0.0.1", 80)),
        ("authz:9191", HostPort("authz", 9191)),
        ("a-b.example.com:65535", HostPort("a-b.example.com", 65535)),
        ("[::1]:9901", HostPort("::1", 9901)),
        ("[2001:db8::1]:1", HostPort("2001:db8::1", 1)),
    ],
)
def test_host_port_accepted(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("authz", "is not HOST:PORT"),
        (":80", "is not HOST:PORT"),
        ("authz:", "port '' is not a number"),
        ("authz:0", "port '0' is not a number from 1 to 65535"),
        ("authz:65536", "from 1 to 65535"),
        ("authz:x", "port 'x'"),
        ("authz:٣", "port '٣'"),  # a digit, but not an ASCII one
        ("::1:80", "write an IPv6 address in brackets"),
        ("a b:80", "is not a host name or IPv4 address"),
        ("-a:80", "is not a host name"),
        ("[zz]:1", "'zz' is not an IPv6 address"),
        ("[::1]80", r"is not \[IPV6\]:PORT"),
        ("[::1", r"is not \[IPV6\]:PORT"),
    ],
)
def test_host_port_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_host_port(text)


def test_host_port_zero_only_when_asked() -> None:
    assert parse_host_port("127.0.0.1:0", port_zero=True) == HostPort("127.0.0.1", 0)
    assert parse_host_port("[::]:0", port_zero=True).host == "::"
    with pytest.raises(ValueError, match="from 0 to 65535"):
        parse_host_port("127.0.0.1:70000", port_zero=True)


def test_host_port_is_ip() -> None:
    assert parse_host_port("10.0.0.1:1").is_ip
    assert parse_host_port("[::1]:1").is_ip
    assert not parse_host_port("authz:1").is_ip


def test_cli_address_flag_says_what_is_wrong() -> None:
    from authz.cli.args import address as _address

    assert _address("127.0.0.1:0") == "127.0.0.1:0"
    assert _address("[::1]:9191") == "[::1]:9191"
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected HOST:PORT, got 'nowhere'"):
        _address("nowhere")
    with pytest.raises(argparse.ArgumentTypeError, match="brackets"):
        _address("::1:9191")


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("API.Example.com", "api.example.com"),
        ("api.example.com:8443", "api.example.com"),
        ("[::1]:80", "[::1]"),
        ("[::1]", "[::1]"),
        ("", ""),
        (":80", ""),
    ],
)
def test_authority_host(authority: str, host: str) -> None:
    assert authority_host(authority) == host
