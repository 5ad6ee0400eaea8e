"""Control-plane credentials (authz.control.auth, authz.control.options)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from authz.control import auth
from authz.control.options import ControlOptions

TOKEN = "a" * 40


def test_bearer_token_accepted_only_when_equal(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    gate = auth.Authenticator(token=auth.TokenFile(str(path)), mtls=False)
    ok = gate.authenticate((("authorization", f"Bearer {TOKEN}"),), {})
    assert ok.identity.startswith("token:") and TOKEN not in ok.identity
    assert gate.authenticate((("authorization", "Bearer " + "b" * 40),), {}).identity == ""
    assert gate.authenticate((("authorization", f"Basic {TOKEN}"),), {}).identity == ""
    assert gate.authenticate((), {}) == auth.ANONYMOUS


def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    gate = auth.Authenticator(token=auth.TokenFile(str(path)), mtls=False)
    path.write_text("c" * 41)  # a different size: seen at once
    assert gate.authenticate((("authorization", f"Bearer {TOKEN}"),), {}).identity == ""
    assert gate.authenticate((("authorization", "Bearer " + "c" * 41),), {}).identity
    path.write_text("short")  # a bad rewrite keeps the last good token
    assert gate.authenticate((("authorization", "Bearer " + "c" * 41),), {}).identity


def test_certificate_identity_prefers_the_uri_san() -> None:
    context = {
        "x509_subject_alternative_name": [b"localhost", b"spiffe://td/ns/ops/sa/admin"],
        "x509_common_name": [b"admin"],
    }
    assert auth.certificate_identity(context) == "spiffe://td/ns/ops/sa/admin"
    assert auth.certificate_identity({"x509_common_name": [b"admin"]}) == "admin"
    assert auth.certificate_identity({}) == ""


def test_local_token_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHZ_RUNTIME_DIR", str(tmp_path / "run"))
    path = auth.ensure_local_token(9193)
    assert path == auth.local_token_path(9193)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text().strip()) == 64
    os.chmod(path.parent, 0o755)
    with pytest.raises(ValueError, match="chmod 700"):
        auth.ensure_local_token(9193)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (ControlOptions(address="0.0.0.0:9193"), "not a loopback address"),
        (ControlOptions(address="10.1.2.3:9193", tls_cert="c"), "go together"),
        (ControlOptions(address="127.0.0.1:9193", client_ca="ca"), "needs --control-tls-cert"),
        (ControlOptions(address=None, token_file="t"), "needs a control plane"),
    ],
)
def test_options_refused(options: ControlOptions, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        options.check()


@pytest.mark.parametrize(
    "options",
    [
        ControlOptions(),
        ControlOptions(address="[::1]:9193"),
        ControlOptions(address="0.0.0.0:9193", token_file="t"),
        ControlOptions(address="0.0.0.0:9193", tls_cert="c", tls_key="k", client_ca="ca"),
        ControlOptions(address=None),
    ],
)
def test_options_accepted(options: ControlOptions) -> None:
    options.check()
