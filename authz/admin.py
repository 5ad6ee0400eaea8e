"""The control-plane service ``authz.v1.Admin`` and the ``authz inventory`` command.

The service runs on the same gRPC server as ext_authz (listed by reflection) and
reports the inventory of the process that answers (with ``--workers N``, each
worker keeps its own: ask more than once, or run one worker, for the whole picture).
``authz inventory`` prints it and can write an OpenAPI 3.1 skeleton of what was
observed: undeclared endpoints as operations to review, declared ones with the
drift seen in monitor mode.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from typing import TYPE_CHECKING, Any

import grpc
import yaml

from authz.inventory import InventoryView, shared_inventory
from authz.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from authz.engine import PolicyEngine

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


def to_proto(view: InventoryView, policy_version: str, *, undeclared_only: bool = False) -> Any:
    message = admin_pb2.Inventory(
        capacity=view.capacity,
        evicted=view.evicted,
        evicted_requests=view.evicted_requests,
        unrouted=view.unrouted,
        policy_version=policy_version,
        started=view.started,
        generated=view.generated,
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
        )
        for reason, count in e.outcomes:
            endpoint.outcomes[reason] = count
    return message


class AdminServicer(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(self, engine: PolicyEngine) -> None:
        self._engine = engine

    async def GetInventory(self, request: Any, context: Any) -> Any:
        policy = self._engine.policy
        view = shared_inventory(policy.shared).view()
        return to_proto(view, policy.version, undeclared_only=request.undeclared_only)


def add_to_server(engine: PolicyEngine, server: Any) -> None:
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(engine), server)  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- the command


def _time(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fetch(server: str, timeout: float, *, undeclared_only: bool = False) -> Any:
    with grpc.insecure_channel(server) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
        request = admin_pb2.GetInventoryRequest(undeclared_only=undeclared_only)
        return stub.GetInventory(request, timeout=timeout)


def render_table(inventory: Any) -> str:
    lines = [
        f"policy {inventory.policy_version}; since {_time(inventory.started)}; "
        f"{len(inventory.endpoints)} endpoints"
    ]
    header = ("", "METHOD", "PATH", "ROUTE", "COUNT", "CALLERS", "FIRST SEEN", "LAST SEEN")
    rows = [header]
    for e in inventory.endpoints:
        rows.append(
            (
                "declared" if e.declared else "UNDECLARED",
                e.method,
                e.path,
                e.route or "-",
                str(e.count),
                str(e.distinct_callers),
                _time(e.first_seen),
                _time(e.last_seen),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for e in inventory.endpoints:
        notes = []
        if e.query_parameters:
            notes.append("query parameters: " + ", ".join(e.query_parameters))
        if e.drift_query_parameters:
            notes.append("drift, query parameters: " + ", ".join(e.drift_query_parameters))
        if e.drift_body_fields:
            notes.append("drift, body fields: " + ", ".join(e.drift_body_fields))
        for note in notes:
            lines.append(f"  {e.method} {e.path}: {note}")
    if inventory.evicted:
        lines.append(
            f"{inventory.evicted} rarely seen undeclared shapes dropped "
            f"({inventory.evicted_requests} requests; capacity {inventory.capacity})"
        )
    return "\n".join(lines)


def as_dict(inventory: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    result: dict[str, Any] = json_format.MessageToDict(
        inventory, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


_SHAPE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(=\*\*)?\}")


def openapi_skeleton(inventory: Any) -> dict[str, Any]:
    """An OpenAPI 3.1 document of the observed endpoints, to review and complete."""
    paths: dict[str, dict[str, Any]] = {}
    for e in inventory.endpoints:
        template, params = _openapi_path(e.path)
        operation: dict[str, Any] = {
            "summary": f"{'declared' if e.declared else 'undeclared'}: observed {e.count} times",
            "responses": {"default": {"description": "not observed: fill in"}},
            "x-authz-observed": {
                "declared": e.declared,
                "count": e.count,
                "distinct_callers": e.distinct_callers,
                "first_seen": _time(e.first_seen),
                "last_seen": _time(e.last_seen),
                "outcomes": dict(sorted(e.outcomes.items())),
            },
        }
        if e.route:
            operation["operationId"] = e.route
        parameters: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
        for name in [*e.query_parameters, *e.drift_query_parameters]:
            parameters.append({"name": name, "in": "query", "schema": {"type": "string"}})
        if parameters:
            operation["parameters"] = parameters
        if e.drift_body_fields:
            operation["x-authz-drift-body-fields"] = list(e.drift_body_fields)
        method = e.method.lower() if e.method.isalpha() else "x-" + e.method.lower()
        paths.setdefault(template, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Observed by authz",
            "version": inventory.policy_version,
            "description": f"Endpoints seen from {_time(inventory.started)} to "
            f"{_time(inventory.generated)}. A skeleton: review before use.",
        },
        "paths": dict(sorted(paths.items())),
    }


def _openapi_path(shape: str) -> tuple[str, list[str]]:
    """``/v1/users/{id}/keys/{id}`` -> (``/v1/users/{id}/keys/{id2}``, [id, id2])."""
    names: list[str] = []

    def rename(m: re.Match[str]) -> str:
        base = m.group(1)
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}{n}"
        names.append(name)
        return "{" + name + "}"

    return _SHAPE_PARAM.sub(rename, shape), names


def cmd_inventory(args: argparse.Namespace) -> int:
    try:
        inventory = fetch(args.server, args.timeout, undeclared_only=args.undeclared)
    except grpc.RpcError as exc:
        print(
            f"authz inventory: {args.server}: {exc.code().name}: {exc.details()}", file=sys.stderr
        )
        return 3
    if args.openapi:
        doc = openapi_skeleton(inventory)
        text = (
            json.dumps(doc, indent=2) + "\n"
            if args.openapi.endswith(".json")
            else yaml.safe_dump(doc, sort_keys=False)
        )
        try:
            if args.openapi == "-":
                sys.stdout.write(text)
                return 0
            with open(args.openapi, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"authz inventory: {args.openapi}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(as_dict(inventory), indent=2))
    else:
        print(render_table(inventory))
        if args.openapi:
            print(f"OpenAPI skeleton written to {args.openapi}")
    return 0


def add_inventory_parser(subparsers: Any, address: Any, positive: Any) -> None:
    p = subparsers.add_parser(
        "inventory",
        help="show the API inventory of a running service (declared and undeclared endpoints)",
    )
    p.add_argument("--server", type=address, default="127.0.0.1:9191", metavar="HOST:PORT")
    p.add_argument("--timeout", type=positive, default=5.0, metavar="SECONDS")
    p.add_argument("--undeclared", action="store_true", help="only endpoints no route declares")
    p.add_argument("--json", action="store_true", help="print the inventory as JSON")
    p.add_argument(
        "--openapi",
        metavar="FILE",
        help="also write an OpenAPI 3.1 skeleton of what was observed (.json: JSON, else "
        "YAML; - for stdout)",
    )
    p.set_defaults(func=cmd_inventory)
