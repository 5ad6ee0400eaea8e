"""``authz replay`` and the stages it cannot re-run: records decided by rate limits,
shedding, blocks or body validation are "not replayable" (by reason), never counted
as divergences or matches; the candidate's own such stages are named as not run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.audit import helpers
from tests.audit.helpers import config, decision, write_trail

CANDIDATE = """\
providers:
  issuer: {type: jwt, issuer: "https://issuer", audiences: [api], discovery: true}
routes:
  - name: get-order
    path: /v1/orders/{id}
    methods: [GET]
    providers: [issuer]
    scopes: [orders:read]
"""
LIMITED = CANDIDATE + (
    "    rate_limits: [{name: per-caller, rate: 10/s, key: [subject]}]\n"
    "    contract: {body: {type: object}}\n"
)

#: (decision, status, reason) recorded for decisions 5, 6, ...: stages replay cannot re-run
UNREPLAYABLE = [
    ("deny", 429, "rate_limited"),
    ("deny", 429, "rate_limited"),
    ("deny", 503, "overloaded"),
    ("deny", 403, "caller_blocked"),
    ("deny", 400, "body_invalid"),
    ("deny", 503, "audit_unavailable"),
    ("monitor", 200, "rate_limited"),  # monitor mode let a rate-limited one through
]


def _trail(tmp_path: Path) -> Path:
    cfg = config(tmp_path)
    recorded = [decision(i) for i in range(5)] + [
        decision(5 + i)._replace(decision=d, status=s, reason=r)
        for i, (d, s, r) in enumerate(UNREPLAYABLE)
    ]
    original = helpers.decision
    helpers.decision = lambda i, **_: recorded[i]  # type: ignore[assignment]
    try:
        write_trail(cfg, len(recorded))
    finally:
        helpers.decision = original  # type: ignore[assignment]
    return Path(cfg.dir)


def replay(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", "replay", *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_records_decided_by_unreplayable_stages_are_reported_by_reason(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(CANDIDATE)
    run = replay(str(trail), str(candidate))
    assert run.returncode == 0, run.stdout + run.stderr  # nothing diverges
    out = run.stdout
    assert "replayed 12 recorded decisions" in out and "5 same, 0 diverge" in out
    assert (
        "not replayable (decided by rate limits, load shedding, blocks or body validation: "
        "state or a body the trail does not keep): 7 (audit_unavailable 1, body_invalid 1, "
        "caller_blocked 1, overloaded 1, rate_limited 3)"
    ) in out
    assert "compared without" not in out  # the candidate has no such stage

    report = json.loads(replay(str(trail), str(candidate), "--json").stdout)
    assert (report["records"], report["same"], report["divergences"]) == (12, 5, 0)
    assert report["not_replayable"] == {
        "rate_limited": 3, "overloaded": 1, "caller_blocked": 1, "body_invalid": 1,
        "audit_unavailable": 1,
    }  # fmt: skip


def test_the_candidates_own_unrun_stages_are_named(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    candidate = tmp_path / "limited.yaml"
    candidate.write_text(LIMITED)
    run = replay(str(trail), str(candidate), "--json")
    report = json.loads(run.stdout)
    assert (report["same"], report["divergences"]) == (5, 0)
    # the 5 allowed records match only up to the limit and the contract replay skips
    assert report["compared_without"] == {"body validation": 5, "rate limits": 5}
    text = replay(str(trail), str(candidate)).stdout
    assert (
        "compared without the candidate's stages replay does not run: body validation 5, "
        "rate limits 5 (same or diverging up to those stages only)"
    ) in text
