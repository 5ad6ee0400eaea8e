"""The stage pipeline: how a check (validation, rate limits, ...) joins the engine.

A check is an async callable on a :class:`Context` that returns normally to let
the request go on or raises an :class:`~authz.errors.AuthzError` to deny it. A
:class:`StageFactory` builds a check at policy load, for the whole policy or for
one route, and returns None where it has nothing to do, so a route pays only for
the checks it uses. Adding a stage is a new module plus one line in
:data:`STAGES`; the engine itself does not change.

Phases, in the order the engine runs them:

- ``request``: once per policy, after the path is canonical and before routing
  (cheap gates that must hold even for undeclared paths, e.g. per-address limits);
- ``pre``: per route, before identity (cheap gates before the costly stages);
- ``post``: per route, after identity and authorization (schema, per-identity limits);
- ``observe``: once per policy, after every decision (allow or deny, declared or not),
  with ``Context.decision`` set; it cannot change the decision and its errors are
  logged, never raised (inventories, statistics).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from authz.model import ANONYMOUS, Decision, Identity, Request
from authz.policy.config import PolicyConfig, RouteConfig

Phase = Literal["request", "pre", "post", "observe"]
T = TypeVar("T")


@dataclass(slots=True)
class Context:
    """What the checks of one request share. Only the engine creates it."""

    request: Request
    path: str  # canonical
    query: str  # raw, without '?'
    route: RouteConfig | None = None
    identity: Identity = ANONYMOUS
    #: Extra headers to set on the request sent upstream (allow only).
    upstream_headers: list[tuple[str, str]] = field(default_factory=list)
    #: Extra headers for the client's response (on allow and on deny).
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    #: The decision, for ``observe`` hooks only (None before it is made).
    decision: Decision | None = None


Check = Callable[[Context], Awaitable[None]]


class Shared:
    """Long-lived objects that survive policy reloads (stores, counters, clients).

    A stage asks for an object by name; the first policy creates it, the next
    ones get the same object, so a reload keeps rate-limit buckets or an
    inventory instead of starting from zero.
    """

    def __init__(self) -> None:
        self._objects: dict[str, object] = {}
        #: Decisions in flight right now (kept by the engine; read by load shedding).
        self.in_flight = 0

    def get(self, name: str, factory: Callable[[], T]) -> T:
        found = self._objects.get(name)
        if found is None:
            found = factory()
            self._objects[name] = found
        return found  # type: ignore[return-value]

    def values(self) -> list[object]:
        return list(self._objects.values())


class StageFactory(Protocol):
    name: str
    phase: Phase

    def build(
        self, policy: PolicyConfig, route: RouteConfig | None, shared: Shared
    ) -> Check | None:
        """The check for this route (None for the ``request`` and ``observe`` phases), or
        None if not needed."""


def _registered() -> list[StageFactory]:
    # Imported here: the stage modules import this one.
    from authz.inventory import InventoryStage
    from authz.ratelimit.stage import RATE_LIMIT_STAGES
    from authz.validation.stage import ValidationStage

    # Within the post phase, per-identity limits run before validation, so a caller
    # over its quota never costs a body parse.
    return [*RATE_LIMIT_STAGES, ValidationStage(), InventoryStage()]


#: The registered stages, in the order they run within a phase.
STAGES: list[StageFactory] = _registered()
