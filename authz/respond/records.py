"""A detector's action as recorded by the enforcer, and its JSON form (the list of
recent actions every replica shares through Redis)."""

from __future__ import annotations

import json
from typing import NamedTuple

from authz.detect.events import Action


class ActionRecord(NamedTuple):
    """One action a detector took, and what became of it."""

    action: Action
    #: enforced | monitor | logged | kept (an entry already in force lasts longer) |
    #: rejected (its target is not one of its kind)
    outcome: str
    detail: str = ""


def record_to_json(record: ActionRecord) -> str:
    a = record.action
    return json.dumps(
        {
            "time": a.time, "detector": a.detector, "response": a.response,
            "target_kind": a.target_kind, "target": a.target, "ttl": a.ttl,
            "reason": a.reason, "evidence": {str(k): str(v) for k, v in a.evidence.items()},
            "monitor": a.monitor, "outcome": record.outcome, "detail": record.detail,
        },
        separators=(",", ":"),
    )  # fmt: skip


def record_from_json(text: str) -> ActionRecord:
    d = json.loads(text)
    action = Action(
        float(d["time"]), str(d["detector"]), d["response"], d["target_kind"], str(d["target"]),
        float(d["ttl"]), str(d["reason"]), dict(d.get("evidence") or {}), bool(d["monitor"]),
    )  # fmt: skip
    return ActionRecord(action, str(d["outcome"]), str(d.get("detail", "")))
