"""``authz replay``: re-decide recorded traffic under a candidate policy.

Every ``decision`` record of an audit directory (:mod:`authz.audit.entry`) is turned
back into a :class:`~authz.model.Request` (method, host, canonical path, the query as
recorded, content type and length, client address) and decided by the real engine
under the candidate, with the clock fixed at the record's time. No credential is
needed: the identity stage is replaced by :class:`RecordedIdentity`, which hands the
route the identity the record says was verified (type, provider, subject, issuer,
scopes, SPIFFE ID, the claims the recording policy read), or re-raises the recorded
identity failure.

What is re-decided: routing (404/405), identity requirements, scopes, claims, SPIFFE
IDs, public or not, monitor mode. What is not: stages whose outcome depends on state
or on the body, which the record does not keep -- rate limits and concurrency caps
(bucket state), load shedding (the load of the moment), blocks, revocations and
step-up (live responses), body validation (the record keeps no body; the query's
credential-like values are redacted, so parameter checks cannot be trusted either),
detection. Both sides are reported, never counted as a divergence nor as a match:

- **not replayable**: a record whose recorded decision came from one of those stages
  (its reason code's phase: ``rate``, ``shed``, ``enforce``, ``validate``; or a
  ``decision``-phase failure such as ``audit_unavailable``), counted by reason;
- **compared without**: a record the candidate allows, on a route with such a stage
  (a contract, rate limits, shedding, automatic responses) that replay did not run:
  the candidate allows it up to that stage, counted by stage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz import reasons as R
from authz.audit.verify import chain_files
from authz.core_stages import AuthorizeStage, CanonicalPathStage, RouteStage
from authz.engine import CompiledPolicy, PolicyEngine
from authz.errors import AuthenticationError, MissingCredential
from authz.model import ANONYMOUS, Identity, Request
from authz.policy.config import PolicyConfig, RouteConfig
from authz.stages import Context, Load, Phase

#: phases whose outcome replay cannot reproduce (state or body): not compared
NOT_REPLAYED = frozenset({"rate", "shed", "enforce", "validate"})
EXAMPLES = 3


def recorded_identity(entry: dict[str, Any]) -> Identity:
    who = entry.get("identity") or {}
    kind = who.get("identity_type", "anonymous")
    if kind == "anonymous" or not who.get("subject"):
        return ANONYMOUS
    exp = entry.get("token_exp")
    return Identity(
        kind=kind,
        subject=str(who.get("subject", "")),
        provider=str(who.get("provider", "")),
        issuer=str(who.get("issuer", "")),
        scopes=frozenset(who.get("scopes") or ()),
        claims=dict(who.get("claims") or {}),
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )


class RecordedIdentity:
    """The identity stage of a replay: the record's verified identity, if the
    candidate route accepts its provider; else the recorded identity failure (or
    401 missing_credential when the record has none: no credential was verified)."""

    name = "identity"
    phase: Phase = "identity"

    def __init__(self) -> None:
        self.identity: Identity = ANONYMOUS
        self.reason = ""

    def build(self, load: Load, route: RouteConfig | None) -> Any:
        if route is None or not route.providers:
            return None
        accepted = frozenset(route.providers)
        recorded = self

        class _Step:
            name = "identity"
            phase: Phase = "identity"

            def step(self, ctx: Context) -> None:
                identity = recorded.identity
                if identity is not ANONYMOUS and identity.provider in accepted:
                    ctx.identity = identity
                    return
                reason = R.REASONS.get(recorded.reason)
                if identity is ANONYMOUS and reason is not None and reason.phase == "identity":
                    raise AuthenticationError("as recorded", reason=reason)
                raise MissingCredential("no credential the route accepts was recorded")

            async def check(self, ctx: Context) -> None:
                self.step(ctx)

            def element(self, ctx: Context) -> str:
                return ctx.identity.provider

        return _Step()


@dataclass(slots=True)
class Group:
    route: str
    reason: str
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class ReplayReport:
    candidate: str
    version: str
    records: int = 0
    same: int = 0
    #: reason -> records not re-decided (their recorded outcome came from a stage
    #: replay does not run)
    not_replayable: Counter[str] = field(default_factory=Counter)
    #: stage -> records re-decided without the candidate's stage of that name
    compared_without: Counter[str] = field(default_factory=Counter)
    allow_to_deny: dict[tuple[str, str], Group] = field(default_factory=dict)
    deny_to_allow: dict[tuple[str, str], Group] = field(default_factory=dict)
    reason_changed: dict[tuple[str, str], Group] = field(default_factory=dict)

    @property
    def divergences(self) -> int:
        return sum(
            g.count
            for table in (self.allow_to_deny, self.deny_to_allow, self.reason_changed)
            for g in table.values()
        )

    def as_json(self) -> dict[str, Any]:
        def groups(table: dict[tuple[str, str], Group]) -> list[dict[str, Any]]:
            return [dataclasses.asdict(g) for g in sorted(table.values(), key=lambda g: -g.count)]

        return {
            "candidate": self.candidate, "version": self.version, "records": self.records,
            "same": self.same, "divergences": self.divergences,
            "not_replayable": dict(self.not_replayable),
            "compared_without": dict(self.compared_without),
            "allow_to_deny": groups(self.allow_to_deny),
            "deny_to_allow": groups(self.deny_to_allow),
            "reason_changed": groups(self.reason_changed),
        }  # fmt: skip


def decisions(directory: Path) -> Iterator[dict[str, Any]]:
    """Every decision entry of every chain, in time order."""
    found: list[dict[str, Any]] = []
    for files in chain_files(directory).values():
        for _, path in files:
            for line in path.read_bytes().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # verify names it; replay takes what it can read
                if isinstance(entry, dict) and entry.get("kind") == "decision":
                    found.append(entry)
    found.sort(key=lambda e: float(e.get("time", 0)))
    yield from found


def replay_config(config: PolicyConfig) -> PolicyConfig:
    """The candidate without the parts replay must not run: its own audit trail, the
    detectors and automatic responses (state of a live service)."""
    return dataclasses.replace(config, audit=None, detection=None, enforcement=None)


#: the candidate's stages replay does not run, as reported
BODY, RATE, SHED, RESPONSES = (
    "body validation", "rate limits", "load shedding", "blocks and responses"
)  # fmt: skip


def _global_unrun(config: PolicyConfig) -> tuple[str, ...]:
    """The candidate's stages that apply to every route and that replay does not run."""
    limits = config.rate_limits
    overload = limits.overload
    shed = (
        overload.background_at is not None
        or overload.normal_at is not None
        or overload.signal_file is not None
        or overload.adaptive is not None
    )
    return tuple(
        name
        for name, on in ((RATE, bool(limits.rules)), (SHED, shed),
                         (RESPONSES, config.enforcement is not None))
        if on
    )  # fmt: skip


def _unrun(route: RouteConfig, global_unrun: tuple[str, ...]) -> tuple[str, ...]:
    own = []
    if route.contract is not None:
        own.append(BODY)
    if route.rate_limits and RATE not in global_unrun:
        own.append(RATE)
    return (*own, *global_unrun)


def replay(directory: Path, config: PolicyConfig) -> ReplayReport:
    return asyncio.run(_replay(directory, config))


async def _replay(directory: Path, config: PolicyConfig) -> ReplayReport:
    identity = RecordedIdentity()
    now = [0.0]
    policy = CompiledPolicy(
        replay_config(config),
        clock=lambda: now[0],
        stages=(CanonicalPathStage(), RouteStage(), identity, AuthorizeStage()),
    )
    engine = PolicyEngine(policy, clock=lambda: now[0])
    report = ReplayReport(config.source, config.version)
    global_unrun = _global_unrun(config)
    unrun = {route.name: _unrun(route, global_unrun) for route in config.routes}
    for entry in decisions(directory):
        report.records += 1
        reason = str(entry.get("reason", ""))
        known = R.REASONS.get(reason)
        if known is not None and (
            known.phase in NOT_REPLAYED or (known.phase == "decision" and reason != "allowed")
        ):
            report.not_replayable[reason] += 1
            continue
        now[0] = float(entry.get("time", 0))
        identity.identity = recorded_identity(entry)
        identity.reason = reason
        query = str(entry.get("query", ""))
        headers = {}
        if entry.get("content_type"):
            headers["content-type"] = str(entry["content_type"])
        if entry.get("content_length"):
            headers["content-length"] = str(entry["content_length"])
        request = Request(
            method=str(entry.get("method", "GET")),
            path=str(entry.get("path", "/")) + (f"?{query}" if query else ""),
            host=str(entry.get("host", "")),
            headers=headers,
            source_address=str(entry.get("client_address", "")),
            request_id=str(entry.get("request_id", "")),
        )
        decision = await engine.check(request)
        if decision.allowed:  # the stages not run come after the ones that denied
            for stage in unrun.get(decision.route, ()):
                report.compared_without[stage] += 1
        was_allowed = entry.get("decision") in ("allow", "monitor")
        if decision.allowed == was_allowed and (was_allowed or decision.reason == reason):
            report.same += 1
            continue
        if was_allowed:
            table, key = report.allow_to_deny, (str(entry.get("route", "")), decision.reason)
        elif decision.allowed:
            table, key = report.deny_to_allow, (decision.route, reason)
        else:
            table, key = report.reason_changed, (str(entry.get("route", "")), decision.reason)
        group = table.setdefault(key, Group(*key))
        group.count += 1
        if len(group.examples) < EXAMPLES:
            group.examples.append(
                {
                    "request_id": entry.get("request_id", ""),
                    "at": entry.get("at", ""),
                    "request": f"{request.method} {request.host}{entry.get('path', '')}",
                    "subject": identity.identity.subject,
                    "recorded": f"{entry.get('status')} {reason}",
                    "candidate": f"{decision.status} {decision.reason}",
                    "candidate_route": decision.route,
                }
            )
    await policy.close()
    return report
