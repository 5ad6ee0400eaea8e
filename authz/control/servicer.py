"""The ``authz.v1.Admin`` servicer of one process: its inventory, its metrics, and
explain on its engine.

Only this module and :mod:`authz.control.server` touch the generated gRPC code on
the serving side; the conversions here are plain functions of plain values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from authz.control.enforcement import EnforcementServicer
from authz.control.policies import PolicyServicer
from authz.explain import Step
from authz.inventory import InventoryView, shared_inventory
from authz.model import Decision
from authz.telemetry.metrics import MemoryHistogram, MemoryMetrics
from authz.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from authz.engine import PolicyEngine
    from authz.lifecycle import PolicyLifecycle

ADMIN_SERVICE: str = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


def inventory_to_proto(
    view: InventoryView, policy_version: str, *, undeclared_only: bool = False
) -> Any:
    message = admin_pb2.Inventory(
        capacity=view.capacity,
        evicted=view.evicted,
        evicted_requests=view.evicted_requests,
        unrouted=view.unrouted,
        policy_version=policy_version,
        started=view.started,
        generated=view.generated,
        workers=1,
    )
    for e in view.endpoints:
        if undeclared_only and e.declared:
            continue
        endpoint = message.endpoints.add(
            method=e.method,
            path=e.path,
            declared=e.declared,
            route=e.route,
            count=e.count,
            first_seen=e.first_seen,
            last_seen=e.last_seen,
            distinct_callers=e.distinct_callers,
            query_parameters=e.query_parameters,
            drift_query_parameters=e.drift_query_parameters,
            drift_body_fields=e.drift_body_fields,
            callers_sketch=e.callers_sketch,
        )
        for reason, count in e.outcomes:
            endpoint.outcomes[reason] = count
    return message


def explanation_to_proto(decision: Decision, steps: tuple[Step, ...]) -> Any:
    def headers(pairs: Any) -> list[Any]:
        return [admin_pb2.Header(name=k, value=v) for k, v in pairs]

    return admin_pb2.Explanation(
        allowed=decision.allowed,
        status=decision.status,
        reason=decision.reason,
        route=decision.route,
        monitored=decision.monitored,
        policy_version=decision.policy_version,
        subject=decision.identity.subject,
        upstream_headers=headers(decision.upstream_headers),
        removed_upstream_headers=list(decision.remove_upstream_headers),
        response_headers=headers(decision.response_headers),
        body=decision.body,
        steps=[
            admin_pb2.Step(
                name=s.name, phase=s.phase, outcome=s.outcome, reason=s.reason,
                element=s.element, duration_ms=s.duration_ms,
            )
            for s in steps
        ],
    )  # fmt: skip


def counters_to_proto(metrics: object, prefix: str = "") -> Any:
    """The series of a :class:`MemoryMetrics` (another Metrics: none)."""
    message = admin_pb2.Counters(workers=1)
    if not isinstance(metrics, MemoryMetrics):
        return message
    for name in sorted(metrics.families):
        if not name.startswith(prefix):
            continue
        family = metrics.families[name]
        for values, series in sorted(family.series.items()):
            s = message.series.add(
                name=name,
                kind=family.kind,
                labels=[
                    admin_pb2.Header(name=k, value=v)
                    for k, v in zip(family.label_names, values, strict=True)
                ],
            )
            if isinstance(series, MemoryHistogram):
                s.count, s.sum = series.count, series.sum
                s.bounds.extend(series.bounds)
                s.bucket_counts.extend(series.counts)
            else:
                s.value = float(getattr(series, "value", 0.0))
    return message


class ExplainRequestError(ValueError):
    """An ExplainRequest that does not describe a request (INVALID_ARGUMENT)."""


def request_of(message: Any) -> Any:
    """The :class:`authz.model.Request` an ExplainRequest describes, read back from a
    CheckRequest exactly as the gRPC transport reads Envoy's."""
    from authz.transport.envoy_grpc import build_check_request, to_request

    url = urlsplit(message.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ExplainRequestError(f"expected an http(s) URL, got {message.url!r}")
    headers = {h.name.lower(): h.value for h in message.headers}
    body = bytes(message.body)
    if body:
        headers.setdefault("content-type", "application/json")
        headers.setdefault("content-length", str(len(body)))
    return to_request(
        build_check_request(
            method=(message.method or ("POST" if body else "GET")).upper(),
            path=(url.path or "/") + (f"?{url.query}" if url.query else ""),
            host=url.netloc,
            headers=headers,
            body=body,
            principal=message.principal,
            certificate=message.certificate,
            source_address=message.source_address or "127.0.0.1",
            request_id="control-explain",
            scheme=url.scheme,
        )
    )


class AdminServicer(EnforcementServicer, PolicyServicer, admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    """Answers for this process's engine (blocks and revocations: EnforcementServicer;
    policy versions: PolicyServicer, with the service's lifecycle)."""

    def __init__(self, engine: PolicyEngine, policies: PolicyLifecycle | None = None) -> None:
        self._engine = engine
        self._policies = policies

    async def GetInventory(self, request: Any, context: Any) -> Any:
        policy = self._engine.policy
        view = shared_inventory(policy.shared).view()
        return inventory_to_proto(view, policy.version, undeclared_only=request.undeclared_only)

    async def Explain(self, request: Any, context: Any) -> Any:
        import grpc

        try:
            check = request_of(request)
        except ExplainRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        decision, steps = await self._engine.explain(check)
        return explanation_to_proto(decision, steps)

    async def GetCounters(self, request: Any, context: Any) -> Any:
        return counters_to_proto(self._engine.metrics, request.prefix)


def add_to_server(servicer: Any, server: Any) -> None:
    admin_pb2_grpc.add_AdminServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
