"""Command-line arguments: a bad value is a usage error naming the flag, never a traceback."""

from __future__ import annotations

import pytest

from authz.cli import build_parser


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon"])
@pytest.mark.parametrize("flag", ["--drain-timeout", "--reload-interval", "--reload-settle"])
def test_a_duration_must_be_a_finite_number(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "policy.yaml", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err
    assert repr(value) in err


def test_a_finite_duration_is_accepted() -> None:
    args = build_parser().parse_args(["serve", "policy.yaml", "--drain-timeout", "2.5"])
    assert args.drain_timeout == 2.5
