"""The scenario's one table: how soon each attacker was actioned, what got through after,
and every action that fell on the legitimate population.

An action on a client is either a deny carrying an enforce reason code
(``caller_blocked``, ``credential_revoked``, ``step_up_required``,
``caller_throttled``) on one of its requests, or an action the control plane lists
whose target names it (one of its addresses, a prefix holding one, its subject,
its token's jti or digest, its API key's digest). The first of either is its
first action; a deny shows when the action was already in force, so the listed
action's own time, when there is one, is the more exact.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bench.scenario.driver import ENFORCE_REASONS, Result, Run
from bench.scenario.model import ATTACKERS, Client, Population

#: within this many seconds of its start, an attacker counts as caught in time
TARGET_SECONDS = 30.0


@dataclass(frozen=True)
class ActionRecord:
    """An action as the control plane lists it (``time``: wall clock, seconds)."""

    time: float
    detector: str
    response: str
    target_kind: str
    target: str
    monitor: bool = False
    #: what the enforcer did: enforced | monitor | logged | kept (one already in force) |
    #: rejected; "" when unknown (from the service's log)
    outcome: str = ""

    @property
    def in_force(self) -> bool:
        """It acts on requests (not monitor mode, not log-only, not rejected)."""
        if self.outcome:
            return self.outcome in ("enforced", "kept")
        return not self.monitor and self.response != "log"


def _matches(client: Client, action: ActionRecord) -> bool:
    kind, target = action.target_kind, action.target
    if kind == "address":
        return target in client.addresses
    if kind == "prefix":
        try:
            net = ipaddress.ip_network(target, strict=False)
        except ValueError:
            return False
        return any(ipaddress.ip_address(a) in net for a in client.addresses)
    if kind == "subject":
        return target == client.subject
    return target in client.credentials  # token, api_key


@dataclass(eq=False)
class Actioned:
    """What happened to one client."""

    client: Client
    requests: int = 0
    #: seconds after the run's start of its first action (None: never)
    first: float | None = None
    #: what did it: "detector:response" from the control plane, or the deny's reason
    by: str = ""
    #: requests sent after the first action, and how many of them reached the upstream
    after: int = 0
    after_upstream: int = 0
    #: denies with an enforce reason, by reason; listed actions, by detector
    denies: Counter[str] = field(default_factory=Counter)
    detectors: Counter[str] = field(default_factory=Counter)
    #: answers that are neither 200 nor an enforce deny (errors, other denies)
    other: Counter[str] = field(default_factory=Counter)
    results: list[Result] = field(default_factory=list)
    #: (seconds after the run's start, "detector:response") of every action naming it
    listed: list[tuple[float, str]] = field(default_factory=list)

    @property
    def since_start(self) -> float | None:
        return None if self.first is None else max(0.0, self.first - self.client.start)


def analyse(
    population: Population, run: Run, actions: Iterable[ActionRecord] | None
) -> dict[str, Actioned]:
    out = {c.name: Actioned(c) for c in population.clients}
    results: dict[str, list[Result]] = {c.name: [] for c in population.clients}
    for r in run.results:
        results[r.client].append(r)
    for action in actions or ():
        when = action.time - run.wall_start
        # log-only, monitor-mode and rejected actions are listed, never a first action
        enforced = action.in_force
        label = f"{action.detector}:{action.response}" + (
            "" if enforced or action.response == "log" else f" ({action.outcome or 'monitor'})"
        )
        for client in population.clients:
            if not _matches(client, action):
                continue
            a = out[client.name]
            a.detectors[label] += 1
            a.listed.append((when, label))
            if enforced and (a.first is None or when < a.first):
                a.first, a.by = when, label
    for name, rs in results.items():
        a = out[name]
        a.requests, a.results = len(rs), rs
        for r in rs:
            if r.reason in ENFORCE_REASONS:
                a.denies[r.reason] += 1
                if a.first is None or r.sent < a.first:
                    a.first, a.by = r.sent, r.reason
            elif r.status != 200 and not _expected_deny(a.client, r):
                a.other[r.reason or str(r.status)] += 1
        if a.first is not None:
            later = [r for r in rs if r.sent >= a.first]
            a.after, a.after_upstream = len(later), sum(r.upstream for r in later)
    return out


def _expected_deny(client: Client, r: Result) -> bool:
    """Denies earned without any detection: an attacker's bad credentials and decoy
    paths, a legitimate client's stale token or retired key."""
    return client.kind in ("stuffer", "prober") or r.tag == "stale"


def _pct(n: int, d: int) -> str:
    return f"{100.0 * n / d:.1f}%" if d else "-"


def _group_row(label: str, kind: str, members: Sequence[Actioned], since: float = 0.0) -> str:
    hit = [m for m in members if m.first is not None and m.first >= since]
    sent = [r for m in members for r in m.results if r.sent >= since]
    requests = len(sent)
    denied = sum(1 for r in sent if r.reason in ENFORCE_REASONS)
    by: Counter[str] = Counter()  # clients per detector:response (monitor/log ones too)
    for m in members:
        labels = {label for when, label in m.listed if when >= since}
        if m.first is not None and m.first >= since and not labels:
            labels = {m.by}  # a deny's reason, when no action was listed
        by.update(labels)
    split = ", ".join(f"{k} {v}" for k, v in sorted(by.items())) or "-"
    # a group's start is the run's: its first action in run time
    first = min((m.first for m in hit if m.first is not None), default=None)
    first_text = "-" if first is None else f"{first:.1f} (run time)"
    share = _pct(len(hit), len(members))
    return (
        f"| {label} | {kind} | {len(members)} | {requests} | {len(hit)} ({share}) "
        f"| {first_text} | {split} | {denied} denied ({_pct(denied, requests)}) |"
    )


#: sub-rows of the normal population: (group prefix, label)
GROUPS = (
    ("office", "in the office /24"),
    ("nat", "behind one NAT address"),
    ("+phone", "also on a phone (carrier NAT /24)"),
)


def table(population: Population, actioned: dict[str, Actioned]) -> str:
    cfg = population.config
    lines = [
        "| client | kind | clients | requests | actioned | first action, s after its start "
        "| by (detector:response or deny reason) | after the first action: reached upstream |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name in ATTACKERS:
        a = actioned[name]
        first = "never" if a.since_start is None else f"{a.since_start:.1f}"
        by = ", ".join(sorted(a.detectors)) or a.by or "-"
        after = (
            f"{a.after_upstream}/{a.after} ({_pct(a.after_upstream, a.after)})"
            if a.first is not None
            else "-"
        )
        lines.append(
            f"| {name} | attacker | {len(a.client.addresses)} addr | {a.requests} "
            f"| {'yes' if a.first is not None else 'no'} | {first} | {by} | {after} |"
        )
    normals = [actioned[c.name] for c in population.by_kind("normal")]
    lines.append(_group_row("normal identities", "legitimate", normals))
    for group, label in GROUPS:
        members = [
            a for a in normals if a.client.group.startswith(group) or group in a.client.group
        ]
        if members:
            lines.append(_group_row(f"- of which {label}", "legitimate", members))
    lines.append(_group_row("heavy user (CI)", "legitimate", [actioned["heavy-ci"]]))
    if cfg.surge_length > 0:
        surgers = [a for a in normals if a.client.surge > 1.0]
        lines.append(
            _group_row(
                f"surge ({cfg.surge_start:.0f}-{cfg.surge_start + cfg.surge_length:.0f} s)",
                "legitimate",
                surgers,
                since=cfg.surge_start,
            )
        )
    return "\n".join(lines)


def verdict(population: Population, actioned: dict[str, Actioned]) -> tuple[bool, list[str]]:
    notes = []
    for name in ATTACKERS:
        s = actioned[name].since_start
        if s is None:
            notes.append(f"{name}: never actioned")
        elif s > TARGET_SECONDS:
            notes.append(f"{name}: actioned after {s:.1f} s (> {TARGET_SECONDS:.0f} s)")
    for c in population.clients:
        if c.kind in ("normal", "heavy") and actioned[c.name].first is not None:
            notes.append(f"{c.name}: false action ({actioned[c.name].by})")
    return not notes, notes


def other_answers(population: Population, actioned: dict[str, Actioned]) -> str:
    """Answers to legitimate clients that were neither 200 nor an action (should be none)."""
    total: Counter[str] = Counter()
    for c in population.clients:
        if c.kind in ("normal", "heavy"):
            total.update(actioned[c.name].other)
    return ", ".join(f"{k} {v}" for k, v in total.most_common()) or "none"
