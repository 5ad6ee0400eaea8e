"""Rendering what the control plane answers: the inventory as a table, JSON or an
OpenAPI 3.1 skeleton of what was observed; an explanation as text or JSON."""

from __future__ import annotations

import datetime
import re
from typing import Any

from authz.explain import Step, render


def _time(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_table(inventory: Any) -> str:
    lines = [
        f"policy {inventory.policy_version}; since {_time(inventory.started)}; "
        f"{len(inventory.endpoints)} endpoints"
        + (f"; {inventory.workers} workers" if inventory.workers > 1 else "")
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
    for endpoint in result.get("endpoints", []):
        endpoint.pop("callers_sketch", None)  # for merging, not for reading
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


def explanation_steps(explanation: Any) -> tuple[Step, ...]:
    return tuple(
        Step(s.name, s.phase, s.outcome, s.reason, s.element, s.duration_ms)  # type: ignore[arg-type]
        for s in explanation.steps
    )


def render_explanation(explanation: Any) -> str:
    """The verdict line, the trace, and what Envoy would be told."""
    verdict = "ALLOW" if explanation.allowed else "DENY"
    monitored = " (monitor: would deny)" if explanation.monitored else ""
    lines = [f"{verdict} {explanation.status} {explanation.reason}{monitored}"]
    lines.append(render(explanation_steps(explanation)))
    for key, value in (
        ("route", explanation.route),
        ("subject", explanation.subject),
        ("policy_version", explanation.policy_version),
    ):
        if value:
            lines.append(f"  {key}: {value}")
    for h in explanation.upstream_headers:
        lines.append(f"  upstream header {h.name}: {h.value}")
    for name in explanation.removed_upstream_headers:
        lines.append(f"  upstream header removed: {name}")
    for h in explanation.response_headers:
        lines.append(f"  response header {h.name}: {h.value}")
    if explanation.body:
        lines.append(f"  body: {explanation.body}")
    return "\n".join(lines)


def explanation_dict(explanation: Any) -> dict[str, Any]:
    """The same JSON shape as the local ``authz explain --json``, plus the headers."""
    return {
        "decision": "allow" if explanation.allowed else "deny",
        "status": explanation.status,
        "reason": explanation.reason,
        "route": explanation.route,
        "monitored": explanation.monitored,
        "steps": [s.as_dict() for s in explanation_steps(explanation)],
        "subject": explanation.subject,
        "policy_version": explanation.policy_version,
        "upstream_headers": {h.name: h.value for h in explanation.upstream_headers},
        "removed_upstream_headers": list(explanation.removed_upstream_headers),
        "response_headers": [[h.name, h.value] for h in explanation.response_headers],
        "body": explanation.body,
    }
