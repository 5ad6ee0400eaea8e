"""The development issuer: keys, tokens, the discovery/JWKS server and the CLI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest

from authz import devissuer
from authz.cli import token as token_cli
from authz.devissuer import DevIssuerServer


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 section 3.1.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
        "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
        "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-"
        "bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert devissuer.jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_generate_mint_and_verify_with_pyjwt(alg: str) -> None:
    key = devissuer.generate_key(alg)
    jwk = key.public_jwk()
    assert key.kid == devissuer.jwk_thumbprint(jwk) == jwk["kid"]
    assert jwk["alg"] == alg and jwk["use"] == "sig" and "d" not in jwk
    token = devissuer.mint(
        key,
        issuer="https://issuer.test",
        subject="alice",
        audience="api",
        scopes=["a", "b"],
        ttl=120,
        extra_claims={"tenant": "acme"},
        now=1_800_000_000,
    )
    assert jwt.get_unverified_header(token)["kid"] == key.kid
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=[alg],
        audience="api",
        issuer="https://issuer.test",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["sub"] == "alice" and claims["scope"] == "a b" and claims["tenant"] == "acme"
    assert claims["iat"] == claims["nbf"] == 1_800_000_000
    assert claims["exp"] == 1_800_000_120
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16


def test_mint_none_removes_claims_and_headers() -> None:
    key = devissuer.generate_key()
    token = devissuer.mint(
        key, issuer="i", subject="s", audience=["a", "b"],
        extra_claims={"exp": None}, headers={"kid": None, "x-test": 1},
    )  # fmt: skip
    header = jwt.get_unverified_header(token)
    assert "kid" not in header and header["x-test"] == 1
    payload = jwt.decode(token, options={"verify_signature": False})
    assert "exp" not in payload and payload["aud"] == ["a", "b"] and "scope" not in payload


def test_generate_rejects_unknown_alg() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        devissuer.generate_key("HS256")


def test_save_and_load_roundtrip(tmp_path: Path) -> None:
    for alg in devissuer.ALGORITHMS:
        key = devissuer.generate_key(alg)
        path = tmp_path / f"{alg}.pem"
        devissuer.save(key, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        loaded = devissuer.load(path)
        assert loaded.kid == key.kid and loaded.alg == alg


def test_load_rejects_non_keys(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    path.write_text("hello")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        devissuer.load(path)
    with pytest.raises(OSError):
        devissuer.load(tmp_path / "absent.pem")


def test_jwks_holds_several_keys() -> None:
    a, b = devissuer.generate_key("ES256"), devissuer.generate_key("RS256")
    doc = devissuer.jwks([a, b])
    assert [k["kid"] for k in doc["keys"]] == [a.kid, b.kid]
    assert len(jwt.PyJWKSet.from_dict(doc).keys) == 2


# -- the server ---------------------------------------------------------------------


def test_server_serves_discovery_and_jwks_with_rotation_and_outage() -> None:
    a, b = devissuer.generate_key("ES256"), devissuer.generate_key("EdDSA")
    with DevIssuerServer([a]) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.port != 0
        status, doc = get(server.url + "/.well-known/openid-configuration")
        assert status == 200
        assert doc["issuer"] == server.url and doc["jwks_uri"] == server.url + "/jwks.json"
        assert [k["kid"] for k in get(server.jwks_uri)[1]["keys"]] == [a.kid]

        server.add_key(b)
        assert [k["kid"] for k in get(server.jwks_uri)[1]["keys"]] == [a.kid, b.kid]
        server.remove_key(a.kid)
        assert [k["kid"] for k in get(server.jwks_uri)[1]["keys"]] == [b.kid]

        server.unavailable = True
        assert get(server.jwks_uri)[0] == 503
        server.unavailable = False
        assert get(server.url + "/nope")[0] == 404

        server.advertised_issuer = "http://elsewhere.test"
        assert get(server.url + "/.well-known/openid-configuration")[1]["issuer"] == (
            "http://elsewhere.test"
        )
        assert server.hits["/jwks.json"] == 4
        url = server.url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/jwks.json", timeout=2)
    with pytest.raises(RuntimeError):
        _ = server.url


# -- the command line ---------------------------------------------------------------


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="authz")
    token_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    result: int = args.func(args)
    return result


def test_cli_keygen_mint_jwks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys"
    assert run("token", "keygen", "--out", str(out), "--alg", "RS256") == 0
    key_file, jwks_file = out / "key.pem", out / "jwks.json"
    assert key_file.exists() and jwks_file.exists()
    published = json.loads(jwks_file.read_text())
    capsys.readouterr()

    assert run("token", "keygen", "--out", str(out)) == 2
    assert "exists" in capsys.readouterr().err

    assert run("token", "jwks", "--key", str(key_file)) == 0
    assert json.loads(capsys.readouterr().out) == published

    argv = ["token", "mint", "--key", str(key_file), "--issuer", "https://i.test", "--sub", "bob"]
    argv += ["--aud", "api", "--scope", "r w", "--ttl", "60"]
    argv += ["--claim", "tenant=acme", "--claim", "level=3", "--claim", "zip=01234"]
    assert run(*argv) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(
        token, jwt.PyJWK(published["keys"][0]).key, algorithms=["RS256"], audience="api"
    )
    assert claims["sub"] == "bob" and claims["scope"] == "r w"
    assert claims["tenant"] == "acme" and claims["level"] == 3 and claims["zip"] == "01234"
    assert claims["exp"] - claims["iat"] == 60


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--claim", "novalue"], "bad --claim 'novalue'"),
        (["--claim", "=x"], "bad --claim '=x'"),
        (["--ttl", "0"], "--ttl must be positive"),
    ],
)
def test_cli_mint_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    run("token", "keygen", "--out", str(tmp_path))
    capsys.readouterr()
    argv = ["token", "mint", "--key", str(tmp_path / "key.pem"), "--issuer", "i", "--sub", "s"]
    assert run(*argv, "--aud", "a", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_missing_or_bad_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.pem")
    assert run("token", "jwks", "--key", missing) == 2
    assert f"cannot read key file {missing}" in capsys.readouterr().err
    (tmp_path / "bad.pem").write_text("junk")
    argv = ["--issuer", "i", "--sub", "s", "--aud", "a"]
    assert run("token", "mint", "--key", str(tmp_path / "bad.pem"), *argv) == 2
    assert "not an unencrypted PEM private key" in capsys.readouterr().err
    assert run("token", "serve", "--key", missing, "--port", "0") == 2


def test_cli_token_without_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("token") == 2
    assert "choose a command" in capsys.readouterr().err


SERVE_SCRIPT = """
import argparse, sys
from authz.cli import token as token_cli
parser = argparse.ArgumentParser(prog="authz")
token_cli.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def test_cli_serve_until_sigterm(tmp_path: Path) -> None:
    assert run("token", "keygen", "--out", str(tmp_path)) == 0
    key = devissuer.load(tmp_path / "key.pem")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, "token", "serve", "--key", str(tmp_path / "key.pem"),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        status, doc = get(url + "/.well-known/openid-configuration")
        assert status == 200 and doc["issuer"] == url
        assert get(url + "/jwks.json")[1]["keys"][0]["kid"] == key.kid
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
