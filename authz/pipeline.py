"""The stage registry and the order of phases: the one place a stage joins the engine.

Adding a capability is a new module with a :class:`~authz.stages.StageFactory` and
one entry in :data:`STAGES`. The engine builds, per policy, one tuple of stages for
the policy-wide phases (:data:`POLICY_PHASES`), one per route (:data:`ROUTE_PHASES`)
and one for ``observe``; it has no branch for any particular stage. This module
imports the implementations; :mod:`authz.stages` (the protocol) imports none of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from authz.core_stages import AuthorizeStage, CanonicalPathStage, IdentityStage, RouteStage
from authz.detect.stage import DetectStage
from authz.hygiene import EncodingCheckStage, RequestHygieneStage
from authz.inventory import InventoryStage
from authz.policy.config import RouteConfig
from authz.ratelimit.stage import RATE_LIMIT_STAGES
from authz.respond.stage import ENFORCE_ADDRESS, ENFORCE_IDENTITY
from authz.stages import FunctionStage, Load, Phase, Stage, StageFactory
from authz.validation.stage import ValidationStage

#: Every phase, in the order the engine runs them.
PHASES: tuple[Phase, ...] = (
    "canonical",
    "request",
    "route",
    "pre",
    "identity",
    "authorize",
    "post",
    "observe",
)
#: Run once per request before a route is known (built with ``route=None``).
POLICY_PHASES: tuple[Phase, ...] = ("canonical", "request", "route")
#: Run per route, after routing.
ROUTE_PHASES: tuple[Phase, ...] = ("pre", "identity", "authorize", "post")

#: The stages every policy has, whatever else is registered.
CORE_STAGES: tuple[StageFactory, ...] = (
    CanonicalPathStage(),
    RouteStage(),
    IdentityStage(),
    AuthorizeStage(),
)

#: The registered stages. Within a phase they run in this order: shedding first
#: (cheapest), then limits; per-identity limits before validation, so a caller over
#: its quota never costs a body parse.
STAGES: tuple[StageFactory, ...] = (
    CORE_STAGES[0],
    ENFORCE_ADDRESS,  # blocked addresses: before any limit is charged, undeclared paths too
    RequestHygieneStage(),  # ambiguous Host, method override, client identity headers
    *RATE_LIMIT_STAGES,
    CORE_STAGES[1],
    EncodingCheckStage(),  # an encoded body on a route that validates bodies: 415
    CORE_STAGES[2],
    ENFORCE_IDENTITY,  # revoked credentials: 401 before a scope check's 403
    CORE_STAGES[3],
    ValidationStage(),
    InventoryStage(),
    DetectStage(),
)


def ordered(stages: Sequence[StageFactory] | None = None) -> tuple[StageFactory, ...]:
    """``stages`` (default: the registry) plus any core stage it lacks, in run order:
    by phase, and within a phase in the order given (the sort is stable). A factory
    with a core stage's name and phase replaces it (replay's recorded identity)."""
    if stages is None:
        stages = STAGES
    missing = [
        core
        for core in CORE_STAGES
        if not any(s is core or (s.name, s.phase) == (core.name, core.phase) for s in stages)
    ]
    rank = {phase: i for i, phase in enumerate(PHASES)}
    return tuple(sorted([*missing, *stages], key=lambda s: rank[s.phase]))


def build(
    factories: Sequence[StageFactory],
    phases: tuple[Phase, ...],
    load: Load,
    route: RouteConfig | None,
) -> tuple[Stage, ...]:
    """The stages of ``phases`` for one route (or the policy), in run order."""
    out: list[Stage] = []
    for phase in phases:
        for factory in factories:
            if factory.phase != phase:
                continue
            built = factory.build(load, route)
            if built is None:
                continue
            if hasattr(built, "element"):
                out.append(built)  # type: ignore[arg-type]
            else:  # a bare coroutine function (or callable object)
                describe = getattr(built, "describe", None)
                described = describe() if describe is not None else ""
                out.append(FunctionStage(factory.name, phase, built, described))  # type: ignore[arg-type]
    return tuple(out)
