"""`authz serve --access-log-*`: the access-log port is loopback unless a secret (or the
explicit override) says otherwise; the flags go together; refused with precise messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.cli import build_parser, main
from authz.cli.serve import access_log_options

SECRET = "0123456789abcdef0123456789abcdef"


def _parse(*argv: str) -> object:
    return build_parser().parse_args(["serve", "policy.yaml", *argv])


def _serve(*argv: str) -> int:
    return main(["serve", "policy.yaml", *argv])


def test_loopback_needs_nothing_more() -> None:
    args = _parse("--access-log-grpc", "127.0.0.1:9194")
    assert args.access_log_grpc == "127.0.0.1:9194"  # type: ignore[attr-defined]
    access_log_options(args)  # type: ignore[arg-type]


def test_non_loopback_without_a_secret_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert _serve("--access-log-grpc", "0.0.0.0:9194") == 2
    err = capsys.readouterr().err
    assert err.startswith("authz serve: error: --access-log-grpc 0.0.0.0:9194: 0.0.0.0 is not")
    assert "--access-log-secret-file FILE" in err and "--access-log-insecure-trust-network" in err


def test_non_loopback_with_a_secret_or_the_override_is_accepted(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    access_log_options(
        _parse("--access-log-grpc", "0.0.0.0:9194", "--access-log-secret-file", str(secret))  # type: ignore[arg-type]
    )
    access_log_options(
        _parse("--access-log-grpc", "0.0.0.0:9194", "--access-log-insecure-trust-network")  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--access-log-secret-file", "x"], "--access-log-secret-file needs --access-log-grpc"),
        (["--access-log-insecure-trust-network"], "needs --access-log-grpc"),
        (["--access-log-grpc", "127.0.0.1:9194", "--access-log-secret-file", "/nonexistent"],
         "cannot read it"),
    ],
)  # fmt: skip
def test_flags_that_do_not_go_together(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _serve(*argv) == 2
    assert message in capsys.readouterr().err


def test_a_weak_secret_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("short\n")
    assert (
        _serve("--access-log-grpc", "127.0.0.1:9194", "--access-log-secret-file", str(secret)) == 2
    )
    assert "at least" in capsys.readouterr().err


def test_workers_get_the_same_access_log_flags(tmp_path: Path) -> None:
    from authz.serve_options import ServeOptions
    from authz.supervisor import access_log_argv

    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    options = ServeOptions(
        policy="p", access_log_grpc="0.0.0.0:9194", access_log_secret_file=str(secret)
    )
    args = _parse(*access_log_argv(options))
    assert args.access_log_grpc == "0.0.0.0:9194"  # type: ignore[attr-defined]
    assert args.access_log_secret_file == str(secret)  # type: ignore[attr-defined]
    access_log_options(args)  # type: ignore[arg-type]
    trusting = ServeOptions(policy="p", access_log_grpc="0.0.0.0:1", access_log_trust_network=True)
    assert "--access-log-insecure-trust-network" in access_log_argv(trusting)
    assert access_log_argv(ServeOptions(policy="p")) == []
