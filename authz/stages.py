"""The stage protocol: what a step of the decision pipeline is.

Every step of a decision is a :class:`Stage`: an object with a ``name``, a
``phase`` and one ``check`` method on a :class:`Context`, which returns normally
to let the request go on or raises an :class:`~authz.errors.AuthzError` to deny
it. A :class:`StageFactory` builds a stage at policy load, for the whole policy
or for one route, and returns None where it has nothing to do, so a route pays
only for the stages it uses. The registry and the order of phases are in
:mod:`authz.pipeline`; this module imports none of the implementations.

The engine calls a stage through its :data:`Step` (:func:`step_of`, bound at load):
a plain function that returns None when the stage is done, or an awaitable the
engine awaits. A stage may define that function itself as ``step`` (optional,
:class:`SteppedStage`): a stage that never waits (canonical path, route, authorize)
does its work in ``step`` and returns None, and one that only sometimes waits
(identity: a cached token needs no I/O) returns a coroutine only then. So a stage
that need not wait costs one call, not a coroutine (~0.3-1 µs each). Without
``step``, the Step is ``check`` (its coroutine is awaited). ``check`` always works,
and does the same as ``step``.

Phases, in the order the engine runs them (:data:`authz.pipeline.PHASES`):

- ``canonical``, ``request``, ``route``: once per policy, before a route is known
  (the canonical path; cheap gates that must hold even for undeclared paths, e.g.
  per-address limits; routing, which sets :attr:`Context.plan`);
- ``pre``: per route, before identity (cheap gates before the costly stages);
- ``identity``, ``authorize``: per route, who calls and whether they may;
- ``post``: per route, after identity and authorization (schema, per-identity limits);
- ``observe``: once per policy, after every decision (allow or deny, declared or not),
  with ``Context.decision`` set; it cannot change the decision and its errors are
  logged, never raised (inventories, statistics).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from authz.model import ANONYMOUS, Decision, Identity, Request
from authz.policy.config import PolicyConfig, RouteConfig
from authz.runtime import Runtime, Runtimes
from authz.telemetry.metrics import MemoryMetrics, Metrics

Phase = Literal["canonical", "request", "route", "pre", "identity", "authorize", "post", "observe"]
T = TypeVar("T")
R = TypeVar("R", bound=Runtime)


@dataclass(slots=True)
class Context:
    """What the stages of one request share. Only the engine creates it."""

    request: Request
    path: str  # canonical
    query: str  # raw, without '?'
    route: RouteConfig | None = None
    #: The compiled plan of ``route`` (an :class:`authz.compiled.RoutePlan`), set by routing.
    plan: Any = None
    identity: Identity = ANONYMOUS
    #: Extra headers to set on the request sent upstream (allow only).
    upstream_headers: list[tuple[str, str]] = field(default_factory=list)
    #: Client-sent request headers to remove before the upstream sees them (allow only;
    #: :mod:`authz.hygiene`).
    remove_upstream: tuple[str, ...] = ()
    #: Extra headers for the client's response (on allow and on deny).
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    #: The decision, for ``observe`` stages only (None before it is made).
    decision: Decision | None = None
    #: The decision record (an :class:`authz.record.DecisionRecord`), for ``observe``.
    record: Any = None
    #: Explain (a dry run): a stage whose check has effects beyond this request
    #: (a rate limit's charge, its counters) undoes or skips them.
    explain: bool = False


Check = Callable[[Context], Awaitable[None]]
#: What the engine calls per stage (:func:`step_of`): None when the stage is done,
#: else an awaitable to await (a coroutine ``check``).
Step = Callable[[Context], Awaitable[None] | None]


class Stage(Protocol):
    """One named step of the pipeline, built at policy load."""

    @property
    def name(self) -> str: ...

    @property
    def phase(self) -> Phase: ...

    async def check(self, ctx: Context) -> None:
        """Return to let the request go on; raise an AuthzError to deny it."""

    def element(self, ctx: Context) -> str:
        """The policy element this stage applied to ``ctx`` (explain only; cheap, pure)."""


class SteppedStage(Stage, Protocol):
    """A stage with its own :data:`Step` (see the module docstring)."""

    def step(self, ctx: Context) -> Awaitable[None] | None:
        """Do what ``check`` does; return None when done, or an awaitable that finishes
        it (raise an AuthzError, here or from the awaitable, to deny)."""


def step_of(stage: Stage) -> Step:
    """What the engine calls for ``stage``: its ``step`` if it has one, else its
    ``check`` (whose coroutine the engine awaits). Bound once, at policy load."""
    step: Step | None = getattr(stage, "step", None)
    return step if step is not None else stage.check


@dataclass(frozen=True, slots=True)
class FunctionStage:
    """A stage whose check is a plain coroutine function (closures, test stages)."""

    name: str
    phase: Phase
    check: Check
    described: str = ""

    def element(self, ctx: Context) -> str:
        return self.described


class Shared:
    """Long-lived objects that survive policy reloads (stores, counters, clients).

    A stage asks for an object by name; the first policy creates it, the next
    ones get the same object, so a reload keeps rate-limit buckets or an
    inventory instead of starting from zero. An object with a lifecycle is asked for
    with :meth:`runtime`, which registers it in :attr:`runtimes`: building a policy
    starts nothing; the service starts what the build registered once it succeeded.
    """

    def __init__(self) -> None:
        self._objects: dict[str, object] = {}
        #: Decisions in flight right now (kept by the engine; read by load shedding).
        self.in_flight = 0
        #: The metrics every policy and runtime of this process counts into.
        self.metrics: Metrics = MemoryMetrics()
        #: The runtimes of this process (stores, inventory, decision log), see authz.runtime.
        self.runtimes = Runtimes()
        #: Binds a stage to the step a policy's hot path calls (:func:`step_of` when
        #: None); telemetry sets a timing one (:mod:`authz.telemetry.stages`).
        self.step_probe: Callable[[Stage], Step] | None = None

    def get(self, name: str, factory: Callable[[], T]) -> T:
        found = self._objects.get(name)
        if found is None:
            found = factory()
            self._objects[name] = found
        return found  # type: ignore[return-value]

    def runtime(self, name: str, factory: Callable[[], R]) -> R:
        """:meth:`get`, and the object registered in :attr:`runtimes` (not started)."""
        found = self.get(name, factory)
        self.runtimes.add(found)
        return found


@dataclass(frozen=True, slots=True)
class Load:
    """What a factory may use to build a stage: the policy being loaded and its parts."""

    config: PolicyConfig
    shared: Shared
    #: provider name -> provider object (an :class:`authz.identity.base.IdentityProvider`)
    providers: dict[str, Any]
    #: the policy's router (an :class:`authz.routing.Router`)
    router: Any
    #: route name -> RoutePlan, filled in by the engine once the route stages are built
    plans: dict[str, Any]


class StageFactory(Protocol):
    name: str
    phase: Phase

    def build(self, load: Load, route: RouteConfig | None) -> Stage | Check | None:
        """The stage for this route (``route`` is None in the policy-wide phases), or
        None if the route does not need it. A bare coroutine function is wrapped in a
        :class:`FunctionStage` named after the factory."""
