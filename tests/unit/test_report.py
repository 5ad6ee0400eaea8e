"""``authz report``: exposure per class from the policy, API keys by age and expiry, and
tokens from a small synthetic audit directory (long-lived, rarely used, per class)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from authz.cli import main
from authz.policy.loader import load_policy
from authz.report.exposure import exposure
from authz.report.usage import MAX_TOKENS, Thresholds, parse_time, scan

DIGEST_A = "cdb261f25818c0b9927e93c353bdc05dddfa18e4ede433d264e910cc94b47aeb"
DIGEST_B = "b" * 64
DIGEST_C = "c" * 64
NOW = 1796169600.0  # 2026-12-02T00:00:00Z
DAY = 86400.0

POLICY = f"""\
decision_log: {{on_failure: deny}}
providers:
  corp: {{type: jwt, issuer: "https://corp.example", audiences: [api], discovery: true}}
  mesh: {{type: mtls, trust_domains: [td.local]}}
  keys:
    type: api_key
    keys:
      - {{id: old, sha256: {DIGEST_A}, owner: billing, scopes: [read], created: "2025-12-02", expires: "2026-12-12"}}
      - {{id: gone, sha256: {DIGEST_B}, owner: ops, scopes: [read, admin], expires: "2026-11-01"}}
      - {{id: fresh, sha256: {DIGEST_C}, owner: web, scopes: [write], created: "2026-11-02", expires: "2027-06-01"}}
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - name: people
    path: /people
    methods: [GET]
    providers: [corp]
    scopes: [people:read]
    claims: {{sub: [alice, bob], tenant: acme}}
    data_class: pii
    rate_limits: [{{name: per-caller, rate: 10/s, key: [subject]}}]
  - name: ledger
    path: /ledger
    methods: [POST]
    providers: [mesh]
    spiffe_ids: [spiffe://td.local/ns/ledger/sa/writer, spiffe://td.local/ns/batch/*]
    data_class: regulated
    rate_limits: [{{name: per-workload, rate: 10/s, key: [spiffe_id]}}]
  - {{name: reports, path: /reports, methods: [GET], providers: [keys, corp], scopes: [read]}}
  - {{name: admin, path: /admin, methods: [GET], providers: [keys], scopes: [admin], data_class: confidential}}
  - {{name: sync, path: /sync, methods: [GET], providers: [mesh]}}
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def decision(
    when: Any,
    route: str,
    digest: str,
    *,
    data_class: str | None = None,
    subject: str = "alice",
    iat: float | None = None,
    exp: float | None = None,
    kind: str = "jwt",
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "time": when,
        "route": route,
        "identity_type": kind,
        "subject": subject,
        "issuer": "https://corp.example",
        "token_digest": digest,
    }
    if data_class is not None:
        record["data_class"] = data_class
    if iat is not None:
        record["token_iat"] = iat
    if exp is not None:
        record["token_exp"] = exp
    return record


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    """Two writers' files: decisions, a checkpoint, a control-plane record, junk."""
    d = tmp_path / "audit"
    d.mkdir()
    hour = NOW - 3600
    first = [
        # alice: a 10-minute token, 5 uses on the pii route (RFC 3339 times)
        *(
            decision(f"2026-12-01T23:0{i}:00Z", "people", "a" * 16, data_class="pii",
                     iat=hour, exp=hour + 600)
            for i in range(5)
        ),
        {"kind": "checkpoint", "time": NOW - 10, "seq": 5, "signature": "x"},
        # bob: a 12-hour token, 4 uses (unix times), no data_class: taken from the policy
        *(
            decision(NOW - 100 + i, "people", "b" * 16, subject="bob", iat=hour, exp=hour + 43200)
            for i in range(4)
        ),
    ]  # fmt: skip
    second = [
        {"kind": "control", "time": NOW - 5, "call": "reload"},
        # carol: 3 uses, the last 45 days ago: rarely used (idle)
        *(
            decision(NOW - 45 * DAY - i, "reports", "c" * 16, subject="carol",
                     iat=NOW - 46 * DAY, exp=NOW - 46 * DAY + 300)
            for i in range(3)
        ),
        # a workload over mTLS: once (rarely used), no token times
        decision(NOW - 60, "ledger", "d" * 16, kind="mtls",
                 subject="spiffe://td.local/ns/ledger/sa/writer"),
        # an undeclared request: no route, no class, no token
        decision(NOW - 30, "", "", kind="anonymous", subject=""),
    ]  # fmt: skip
    (d / "w0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first))
    (d / "w1.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in second)
        + "not json\n"
        + "[1, 2]\n"
        + json.dumps(decision("yesterday", "people", "e" * 16)) + "\n"
        + "\n"
    )  # fmt: skip
    (d / "notes.txt").write_text(json.dumps(decision(NOW, "people", "f" * 16)) + "\n")
    return d


# --------------------------------------------------------------------------- policy side


def test_exposure_lists_every_class_highest_first_with_who_reaches_it(tmp_path: Path) -> None:
    exp = exposure(load_policy(write(tmp_path, POLICY)), now=NOW)
    by = {c.data_class: c for c in exp.classes}
    assert [c.data_class for c in exp.classes] == [
        "regulated", "pii", "confidential", "internal", "public",
    ]  # fmt: skip
    assert [r.name for r in by["pii"].routes] == ["people"]
    assert by["pii"].subjects == ("alice", "bob")  # allowed by the sub claim
    assert by["pii"].scopes == ("people:read",)
    assert by["regulated"].spiffe_ids == (
        "spiffe://td.local/ns/batch/*",
        "spiffe://td.local/ns/ledger/sa/writer",
    )
    # an mTLS route without an allowlist admits the whole trust domain
    assert by["internal"].spiffe_ids == ("spiffe://td.local/*",)
    # keys reach a route when their scopes cover it: old and gone read, only gone admin
    assert by["internal"].api_keys == ("keys/gone", "keys/old")
    assert by["confidential"].api_keys == ("keys/gone",)
    assert by["public"].public_routes == 1
    [people] = by["pii"].routes
    [corp] = people.reach
    assert corp.who == ("https://corp.example",)
    assert dict(corp.claims) == {"sub": ("alice", "bob"), "tenant": ("acme",)}


def test_api_keys_by_age_and_expiry(tmp_path: Path) -> None:
    exp = exposure(load_policy(write(tmp_path, POLICY)), now=NOW, expiry_days=30)
    keys = {k.id: k for k in exp.keys}
    assert keys["old"].status == "near_expiry"  # 10 days left
    assert round(keys["old"].days_left or 0) == 10
    assert round(keys["old"].age_days or 0) == 365
    assert keys["old"].routes == ("reports",) and keys["old"].classes == ("internal",)
    assert keys["gone"].status == "expired"
    assert keys["gone"].age_days is None  # no created date declared
    assert keys["gone"].classes == ("confidential", "internal")  # highest first
    assert keys["fresh"].status == "ok" and keys["fresh"].routes == ()  # reaches nothing
    # a shorter threshold: the old key is no longer flagged
    keys = {k.id: k for k in exposure(load_policy(tmp_path / "policy.yaml"), now=NOW,
                                      expiry_days=5).keys}  # fmt: skip
    assert keys["old"].status == "ok"


def test_a_key_created_after_it_expires_is_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        f"""\
        providers:
          keys:
            type: api_key
            keys:
              - {{id: k, sha256: {DIGEST_A}, owner: o, created: "2031-01-01", expires: "2030-01-01"}}
        routes:
          - {{name: a, path: /a, methods: [GET], providers: [keys]}}
        """,
    )
    assert main(["validate", str(path)]) == 1
    text = path.read_text()
    line = text[: text.index('"2031')].count("\n") + 1
    column = text.index('"2031') - text.rfind("\n", 0, text.index('"2031'))
    assert capsys.readouterr().err.splitlines()[0] == (
        f"{path}:{line}:{column}: $.providers.keys.keys[0].created: "
        "a key cannot be created after it expires"
    )


# --------------------------------------------------------------------------- audit side


def test_scan_counts_tokens_per_class(tmp_path: Path, audit: Path) -> None:
    exp = exposure(load_policy(write(tmp_path, POLICY)), now=NOW)
    usage = scan(audit, now=NOW, class_of=exp.class_of(), thresholds=Thresholds())
    assert usage.files == 2  # *.jsonl only
    assert usage.records == 5 + 4 + 3 + 1 + 1
    assert usage.skipped == 2  # the checkpoint and the control-plane record
    assert usage.malformed == 3  # not JSON, not an object, a time that is no time
    pii = usage.by_class["pii"]
    assert (pii.records, pii.tokens, pii.long_lived, pii.rarely_used) == (9, 2, 1, 0)
    assert [t.subject for t in usage.long_lived] == ["bob"]
    assert usage.long_lived[0].lifetime == 43200
    # carol idle for 45 days (3 uses is not "fewer than 3"), the workload used once
    assert [t.subject for t in usage.rarely_used] == [
        "carol",
        "spiffe://td.local/ns/ledger/sa/writer",
    ]
    assert usage.by_class["internal"].rarely_used == 1  # carol on reports
    assert usage.by_class["regulated"].rarely_used == 1
    assert usage.by_class[""].records == 1 and usage.by_class[""].tokens == 0


def test_thresholds_move_what_is_flagged(tmp_path: Path, audit: Path) -> None:
    class_of = exposure(load_policy(write(tmp_path, POLICY)), now=NOW).class_of()
    strict = scan(audit, now=NOW, class_of=class_of,
                  thresholds=Thresholds(long_lived=300, rare_uses=5, rare_days=60))  # fmt: skip
    assert sorted(t.subject for t in strict.long_lived) == ["alice", "bob"]
    # fewer than 5 uses: bob (4), carol (3), the workload (1); carol is not idle for 60 days
    assert sorted(t.subject for t in strict.rarely_used) == [
        "bob", "carol", "spiffe://td.local/ns/ledger/sa/writer",
    ]  # fmt: skip


def test_scan_bounds_the_tokens_it_tracks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import authz.report.usage as usage_module

    monkeypatch.setattr(usage_module, "MAX_TOKENS", 3)
    d = tmp_path / "audit"
    d.mkdir()
    lines = [json.dumps(decision(NOW, "people", f"{i:016x}")) for i in range(10)]
    (d / "a.jsonl").write_text("\n".join(lines) + "\n")
    usage = scan(d, now=NOW, class_of={"people": "pii"})
    assert usage.by_class["pii"].tokens == 3 and usage.untracked == 7
    assert MAX_TOKENS > 3


def test_times_are_rfc3339_or_unix() -> None:
    assert parse_time("2026-12-02T00:00:00Z") == NOW
    assert parse_time("2026-12-02T01:00:00+01:00") == NOW
    assert parse_time(NOW) == NOW
    assert parse_time("2026-12-02T00:00:00") is None  # no offset: not RFC 3339
    assert parse_time(True) is None and parse_time("soon") is None


# --------------------------------------------------------------------------- CLI


def test_report_text(tmp_path: Path, audit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, POLICY)
    code = main(["report", str(policy), "--audit", str(audit), "--now", "2026-12-02T00:00:00Z"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{policy}: version sha256:")
    assert "pii: 1 route; providers corp; scopes people:read; subjects alice, bob\n" in out
    assert "reached by jwt corp: subjects alice, bob of issuer https://corp.example " in out
    assert "with tenant in {acme}" in out
    assert "static API keys: 3, 2 expired or expiring within 30 days" in out
    assert "keys/old (owner billing): created 2025-12-02 (365 days old), expires " in out
    assert "NEAR EXPIRY" in out and "EXPIRED" in out
    assert "audit " in out and "2 files, 14 decision records (2 other records skipped" in out
    assert "  pii                  9       2           1            0\n" in out
    assert "long-lived tokens (exp - iat > 1h): 1\n    bbbbbbbbbbbbbbbb jwt bob" in out
    assert "lifetime 12h, 4 uses" in out


def test_report_json(tmp_path: Path, audit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, POLICY)
    argv = ["report", str(policy), "--audit", str(audit), "--json", "--now", str(int(NOW)),
            "--long-lived", "30m", "--rare-uses", "2", "--rare-days", "40", "--expiry-days", "5"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["as_of"] == "2026-12-02T00:00:00Z"
    assert data["thresholds"] == {
        "expiry_days": 5.0, "long_lived_s": 1800.0, "rare_uses": 2, "rare_days": 40.0,
    }  # fmt: skip
    classes = {c["data_class"]: c for c in data["classes"]}
    assert classes["pii"]["audit"] == {
        "records": 9, "tokens": 2, "long_lived": 1, "rarely_used": 0,
    }  # fmt: skip
    assert [r["name"] for r in classes["regulated"]["routes"]] == ["ledger"]
    assert classes["regulated"]["routes"][0]["reached_by"][0]["type"] == "mtls"
    keys = {k["id"]: k for k in data["api_keys"]}
    assert keys["old"]["status"] == "ok"  # 10 days left, threshold 5
    assert keys["gone"]["status"] == "expired" and keys["gone"]["created"] is None
    assert [t["subject"] for t in data["audit"]["long_lived"]] == ["bob"]
    # idle for 45 days > 40; the workload seen once < 2
    assert [t["subject"] for t in data["audit"]["rarely_used"]] == [
        "carol", "spiffe://td.local/ns/ledger/sa/writer",
    ]  # fmt: skip
    assert data["audit"]["unrouted_records"] == 1


def test_report_without_audit_has_no_audit_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(write(tmp_path, POLICY)), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "audit" not in data and "audit" not in data["classes"][0]


@pytest.mark.parametrize(
    "argv",
    [
        ["--now", "tomorrow"],
        ["--long-lived", "forever"],
        ["--rare-uses", "0"],
        ["--expiry-days", "-1"],
    ],
)
def test_bad_arguments_exit_2(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["report", str(write(tmp_path, POLICY)), *argv])
    assert info.value.code == 2
    assert "authz report: error:" in capsys.readouterr().err


def test_a_missing_audit_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", str(write(tmp_path, POLICY)), "--audit", str(tmp_path / "none")])
    assert code == 2
    assert "authz report: --audit" in capsys.readouterr().err


def test_an_invalid_policy_exits_1_with_its_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "routes:\n  - {name: a, path: /a, methods: [GET], public: true, data_class: pii}\n",
    )
    assert main(["report", str(path)]) == 1
    err = capsys.readouterr().err
    assert "$.routes[0].data_class: a public route (public: true)" in err
    assert err.endswith(f"{path}: invalid (1 problem)\n")


def test_identity_fields_nested_as_the_audit_trail_writes_them(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    d.mkdir()
    line = {
        "kind": "decision", "seq": 1, "prev": "0" * 64, "time": NOW - 10, "route": "people",
        "data_class": "pii", "token_digest": "1234567890abcdef", "token_iat": NOW - 90000,
        "token_exp": NOW, "identity": {"identity_type": "jwt", "subject": "dora",
                                       "issuer": "https://corp.example"},
    }  # fmt: skip
    first = {"kind": "file", "seq": 0, "chain": "w0", "time": NOW - 20}
    (d / "audit-w0-000000.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(line) + "\n")
    usage = scan(d, now=NOW, class_of={})
    [token] = usage.long_lived
    assert (token.subject, token.issuer, token.identity_type) == (
        "dora", "https://corp.example", "jwt",
    )  # fmt: skip
    assert usage.skipped == 1 and usage.by_class["pii"].long_lived == 1
