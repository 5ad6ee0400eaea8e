"""`authz test`: the example tests pass (so CI runs them), a wrong expectation fails
with a readable diff, a bad test file is refused with its place (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.cli import main

REPO = Path(__file__).resolve().parents[2]
POLICY = str(REPO / "examples" / "policy.yaml")


def write(tmp_path: Path, text: str, name: str = "cases.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_example_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", POLICY]) == 0
    out = capsys.readouterr().out.splitlines()
    cases = [line for line in out if line.startswith(("PASS ", "FAIL "))]
    assert len(cases) >= 15
    assert all(
        line.startswith("PASS examples/tests/orders.yaml::") or "PASS " in line for line in cases
    )
    assert out[-1].startswith("OK: ") and " 0 failed (1 file" in out[-1]


def test_a_wrong_expectation_fails_with_a_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = write(
        tmp_path,
        """\
cases:
  - name: readers may create orders (wrong)
    request:
      method: POST
      url: http://api.local/v1/orders
      token: {provider: dev, sub: alice, scope: orders:read}
      body: {items: [{sku: ABC-1234, qty: 1}]}
    expect:
      decision: allow
      status: 200
      headers: {x-authz-subject: alice}
  - name: health
    request: {url: http://api.local/healthz}
    expect: {status: 200}
""",
    )
    assert main(["test", POLICY, cases]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {cases}::readers may create orders (wrong)  ({cases}:2:5)" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("FAIL"))
    diff = [line.strip() for line in lines[start + 1 : start + 9]]
    assert diff[:6] == [
        "decision                         expected allow",
        "got deny",
        "status                           expected 200",
        "got 403",
        "response header x-authz-subject  expected alice",
        "got (absent)",
    ]
    assert f"PASS {cases}::health" in out
    assert out.splitlines()[-1].startswith("FAILED: 1 passed, 1 failed")


def test_the_clock_decides_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the legacy key expires on 2030-01-01: valid at the default clock, not in 2031
    text = """\
clock: {clock}
cases:
  - name: legacy key
    request:
      url: http://api.local/v1/orders/1
      api_key: {{provider: legacy, value: demo-key-0123456789abcdef}}
    expect: {{decision: allow}}
"""
    assert main(["test", POLICY, write(tmp_path, text.format(clock="2029-12-31T23:59:00Z"))]) == 0
    later = write(tmp_path, text.format(clock="2030-01-01T00:00:01Z"), "later.yaml")
    assert main(["test", POLICY, later]) == 1
    out = capsys.readouterr().out
    assert "reason" not in out.split("FAIL", 1)[0]
    assert "got deny" in out


def test_a_key_file_signs_the_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from authz.devissuer import generate_key, save

    save(generate_key("RS256"), tmp_path / "dev.pem")
    cases = write(
        tmp_path,
        """\
keys:
  dev: {file: dev.pem}
cases:
  - name: signed with the file's key
    request:
      url: http://api.local/v1/orders
      token: {provider: dev, sub: alice, scope: orders:read}
    expect: {decision: allow, headers: {x-authz-subject: alice}}
""",
    )
    assert main(["test", POLICY, cases]) == 0, capsys.readouterr()


@pytest.mark.parametrize(
    ("text", "located"),
    [
        (
            "cases:\n  - name: x\n    request: {url: http://a/}\n    expect: {stauts: 200}\n",
            ":4:14: $.cases[0].expect: unknown field 'stauts'",
        ),
        (
            "cases:\n  - name: x\n    request: {url: http://a/}\n    expect: {status: ok}\n",
            ":4:22: $.cases[0].expect.status: 'ok' is not of type 'integer'",
        ),
        (
            "cases:\n  - name: x\n    request:\n      url: http://a/\n"
            "      token: {provider: nope}\n    expect: {status: 200}\n",
            ":5:25: $.cases[0].request.token.provider: the policy has no JWT provider 'nope'",
        ),
        (
            "cases:\n  - name: x\n    request:\n      url: http://a/\n"
            "      token: {provider: dev, ttl: soon}\n    expect: {status: 200}\n",
            ":5:35: $.cases[0].request.token.ttl: invalid duration 'soon'",
        ),
        (
            "clock: yesterday\ncases:\n  - name: x\n    request: {url: http://a/}\n"
            "    expect: {status: 200}\n",
            ":1:8: $.clock: expected ISO 8601 time or unix seconds, got 'yesterday'",
        ),
        (
            "cases:\n  - name: x\n    request: {url: http://a/}\n    expect: {status: 200}\n"
            "  - name: x\n    request: {url: http://a/}\n    expect: {status: 200}\n",
            ":5:11: $.cases[1].name: a second case named 'x'",
        ),
        ("cases: [\n", ":2:1: invalid YAML: expected the node content"),
    ],
)
def test_a_bad_test_file_is_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, located: str
) -> None:
    path = write(tmp_path, text)
    assert main(["test", POLICY, path]) == 2
    err = capsys.readouterr()
    assert path + located in err.err
    assert "PASS" not in err.out and "FAIL" not in err.out


def test_no_tests_and_a_bad_policy_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nroutes:\n  - {name: h, path: /h, methods: [GET], public: true}\n"
    )
    assert main(["test", str(policy)]) == 2
    assert f"no test files in {tmp_path / 'tests'}" in capsys.readouterr().err
    policy.write_text("version: 1\nroutes: 3\n")
    assert main(["test", str(policy)]) == 2
    assert "routes" in capsys.readouterr().err


def test_the_readme_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    section = (REPO / "README.md").read_text().split("## Testing a policy", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert main(["test", POLICY, write(tmp_path, example)]) == 0, capsys.readouterr().out
    assert "OK: 3 passed, 0 failed" in capsys.readouterr().out
