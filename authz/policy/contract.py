"""Route contracts from the policy file (``contract:``) into :class:`ContractConfig`.

Shared by hand-written routes and the OpenAPI importer (:mod:`authz.policy.openapi`):
both end in the same checks, so a contract means the same wherever it was written.
Every schema is checked against the draft 2020-12 meta-schema and compiled (linear-time
patterns) here, so ``authz validate`` reports an unusable one with its location.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from authz.policy.config import (
    FORM_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    BodyLimits,
    ContractConfig,
    JsonSchema,
    Parameter,
)
from authz.policy.document import JsonPath
from authz.validation.schema import canonical, problems

Problem = Callable[[JsonPath, str], None]
Where = Callable[[JsonPath], str]


@dataclass(frozen=True, slots=True)
class ContractDefaults:
    """The policy's ``validation:`` section: defaults for every contract."""

    max_body_bytes: int = 65_536
    unknown_query_parameters: str = "allow"
    limits: BodyLimits = field(default_factory=BodyLimits)


def defaults_from(spec: Any) -> ContractDefaults:
    spec = spec if isinstance(spec, dict) else {}
    base = BodyLimits()
    return ContractDefaults(
        max_body_bytes=int(spec.get("max_body_bytes", 65_536)),
        unknown_query_parameters=str(spec.get("unknown_query_parameters", "allow")),
        limits=BodyLimits(
            max_depth=int(spec.get("max_depth", base.max_depth)),
            max_members=int(spec.get("max_members", base.max_members)),
            max_fields=int(spec.get("max_fields", base.max_fields)),
        ),
    )


def readable_body_type(kind: str) -> bool:
    """Whether authz can read (and so validate) a body of this media type."""
    if kind in (JSON_MEDIA_TYPE, FORM_MEDIA_TYPE):
        return True
    return kind.startswith("application/") and kind.endswith("+json")


def make_schema(
    raw: Any,
    at: JsonPath,
    problem: Problem,
    where: Where,
    *,
    locate: Callable[[JsonPath], JsonPath] | None = None,
) -> JsonSchema | None:
    """Check and compile one schema; report each problem at its place in the file.

    ``locate`` maps a path inside ``raw`` to a path in the file (default: ``at`` + path).
    """
    found = False
    for err in problems(raw):
        found = True
        inner = locate(err.path) if locate is not None else (*at, *err.path)
        problem(inner, str(err))
    if found:
        return None
    return JsonSchema(text=canonical(raw), location=where(at))


def build_parameters(
    specs: list[dict[str, Any]],
    at: JsonPath,
    problem: Problem,
    where: Where,
    template_params: tuple[str, ...],
) -> tuple[Parameter, ...]:
    params: list[Parameter] = []
    seen: set[tuple[str, str]] = set()
    for i, spec in enumerate(specs):
        pat: JsonPath = (*at, i)
        where_in = spec["in"]
        name = spec["name"].lower() if where_in == "header" else spec["name"]
        if (name, where_in) in seen:
            problem((*pat, "name"), f"{where_in} parameter {name!r} is declared twice")
            continue
        seen.add((name, where_in))
        if where_in == "path" and name not in template_params:
            problem((*pat, "name"), f"the path template has no parameter {{{name}}}")
            continue
        schema = None
        if "schema" in spec:
            schema = make_schema(spec["schema"], (*pat, "schema"), problem, where)
        params.append(
            Parameter(
                name=name,
                where=where_in,
                required=True if where_in == "path" else bool(spec.get("required", False)),
                schema=schema,
            )
        )
    return tuple(params)


def build_contract(
    spec: dict[str, Any],
    at: JsonPath,
    problem: Problem,
    where: Where,
    defaults: ContractDefaults,
    template_params: tuple[str, ...],
) -> ContractConfig:
    """A hand-written ``contract:`` of a route."""
    body = None
    if "body" in spec:
        body = make_schema(spec["body"], (*at, "body"), problem, where)
    content_types = tuple(spec.get("content_types", (JSON_MEDIA_TYPE,)))
    if "body" in spec:
        for j, kind in enumerate(content_types):
            if not readable_body_type(kind):
                problem(
                    (*at, "content_types", j),
                    f"{kind}: a body schema applies to JSON (application/json, "
                    "application/*+json) and form (application/x-www-form-urlencoded) "
                    "bodies only",
                )
    limits = defaults.limits
    return ContractConfig(
        body=body,
        body_required=bool(spec.get("body_required", "body" in spec)),
        content_types=content_types,
        max_body_bytes=int(spec.get("max_body_bytes", defaults.max_body_bytes)),
        parameters=build_parameters(
            spec.get("parameters", []), (*at, "parameters"), problem, where, template_params
        ),
        unknown_query_parameters=spec.get(
            "unknown_query_parameters", defaults.unknown_query_parameters
        ),
        limits=BodyLimits(
            max_depth=int(spec.get("max_depth", limits.max_depth)),
            max_members=int(spec.get("max_members", limits.max_members)),
            max_fields=int(spec.get("max_fields", limits.max_fields)),
        ),
    )
