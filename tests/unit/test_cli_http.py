"""`authz serve --http*`: addresses (loopback by default), the trust rule, and the
bounds of the HTTP transport, each refused with a precise message."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.cli import build_parser, main
from authz.cli.serve import http_options as _http_options
from authz.transport.http_wire import HttpLimits

SECRET = "0123456789abcdef0123456789abcdef"


def _parse(*argv: str) -> object:
    return build_parser().parse_args(["serve", "policy.yaml", *argv])


@pytest.mark.parametrize(
    ("given", "address"),
    [
        ("9192", "127.0.0.1:9192"),
        (":9192", "127.0.0.1:9192"),
        ("127.0.0.1:9192", "127.0.0.1:9192"),
        ("0.0.0.0:9192", "0.0.0.0:9192"),
        ("[::1]:9192", "[::1]:9192"),
    ],
)
def test_http_address_port_alone_is_loopback(given: str, address: str) -> None:
    assert _parse("--http", given).http == address  # type: ignore[attr-defined]


@pytest.mark.parametrize("given", ["nowhere", "70000", ":x", "host:"])
def test_http_address_errors(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse("--http", given)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --http:" in err


def _serve(*argv: str) -> int:
    return main(["serve", "policy.yaml", *argv])


def test_non_loopback_without_a_secret_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert _serve("--http", "0.0.0.0:9192") == 2
    err = capsys.readouterr().err
    assert err.startswith("authz serve: error: --http 0.0.0.0:9192: 0.0.0.0 is not a loopback")
    assert "--http-secret-file FILE" in err and "--http-insecure-trust-network" in err


def test_non_loopback_with_a_secret_or_the_override_is_accepted(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    assert _http_options(_parse("--http", "0.0.0.0:9192", "--http-secret-file", str(secret)))
    assert _http_options(_parse("--http", "0.0.0.0:9192", "--http-insecure-trust-network"))
    assert _http_options(_parse("--http", "9192")) == HttpLimits()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the secret is empty"),
        ("\n", "the secret is empty"),
        ("short-secret\n", "the secret has 12 characters; at least 32"),
        (SECRET + " x\n", "may hold only letters, digits and -._~+/="),
        (SECRET + "%REQ(x)%", "may hold only"),
        (SECRET + "\n" + SECRET + "\n", "may hold only"),
    ],
)
def test_bad_secret_files_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(content)
    assert _serve("--http", "9192", "--http-secret-file", str(secret)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert SECRET not in err  # never echoed


def test_a_missing_secret_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _serve("--http", "9192", "--http-secret-file", str(tmp_path / "nope")) == 2
    assert "cannot read it: No such file or directory" in capsys.readouterr().err


def test_http_flags_need_http(capsys: pytest.CaptureFixture[str]) -> None:
    assert _serve("--http-idle-timeout", "5") == 2
    assert "--http-idle-timeout needs --http" in capsys.readouterr().err


def test_limits_from_flags() -> None:
    args = _parse(
        "--http", "9192", "--http-max-target-bytes", "4096", "--http-max-head-bytes", "8192",
        "--http-header-timeout", "2.5", "--http-body-timeout", "4", "--http-idle-timeout", "40",
        "--http-max-connections", "100",
    )  # fmt: skip
    assert _http_options(args) == HttpLimits(
        max_target=4096, max_head=8192, header_timeout=2.5, body_timeout=4,
        idle_timeout=40, max_connections=100,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--http-max-target-bytes", "10"], "expected a whole number from 64 to"),
        (["--http-max-head-bytes", "1k"], "expected a whole number from 1024 to"),
        (["--http-header-timeout", "0"], "expected seconds from 0.01 to 86400, got '0'"),
        (["--http-idle-timeout", "nan"], "expected seconds from 0.01 to 86400"),
        (["--http-body-timeout", "soon"], "expected seconds, got 'soon'"),
        (["--http-max-connections", "0"], "expected a whole number from 1 to 1000000"),
    ],
)
def test_bad_limits_are_argparse_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse("--http", "9192", *argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_target_bound_above_head_bound_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert _serve("--http", "9192", "--http-max-target-bytes", "70000") == 2
    assert "--http-max-target-bytes 70000 is more than --http-max-head-bytes 65536" in (
        capsys.readouterr().err
    )


def test_workers_get_the_same_http_transport(tmp_path: Path) -> None:
    from authz.serve_options import ServeOptions
    from authz.supervisor import http_argv

    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    limits = HttpLimits(max_target=2048, header_timeout=2.5, idle_timeout=40, max_connections=9)
    options = ServeOptions(
        policy="policy.yaml", http="0.0.0.0:9192", http_limits=limits,
        http_secret_file=str(secret),
    )  # fmt: skip
    args = _parse("--http", "0.0.0.0:9192", *http_argv(options))
    assert _http_options(args) == limits
    assert args.http_secret_file == str(secret)  # type: ignore[attr-defined]
    trusting = ServeOptions(policy="p", http="0.0.0.0:1", http_trust_network=True)
    assert "--http-insecure-trust-network" in http_argv(trusting)


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_one_trailing_newline_is_stripped(tmp_path: Path, ending: str) -> None:
    from authz.transport.envoy_http import read_secret_file

    secret = tmp_path / "secret"
    secret.write_bytes((SECRET + ending).encode())
    assert read_secret_file(str(secret)) == SECRET
