"""Everything that changes from one compiled policy to another, per route
(``authz diff``), with the widenings a reload logs.

:func:`compare` is pure: two :class:`~authz.policy.config.PolicyConfig` values in,
one :class:`PolicyDiff` out. It walks the compiled configs field by field (frozen
dataclasses all the way down, so a field a later change adds to a route, a provider
or a section is compared without a change here): routes and providers by name,
named entries inside them (rate-limit rules, API keys, contract parameters) by name
too, JSON Schemas summarised as the JSON pointers that differ. What a change opens
up comes from :func:`authz.policy.diff.widenings`, the same findings the service
logs at a reload, attached to the route they name.

A route's ``mode`` is compared as it applies (its own, else the policy's), so a
policy-wide switch shows on every route it reaches. ``location`` fields (file
positions) are not changes. Passwords in store URLs are masked.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from authz.policy.config import JsonSchema, PolicyConfig, RouteConfig
from authz.policy.diff import Finding, widenings

#: Fields that say where something is written, not what it does.
_POSITION_FIELDS = frozenset({"location", "route"})
#: PolicyConfig fields compared elsewhere (routes, providers) or identifying the file.
_POLICY_SKIP = frozenset({"version", "source", "providers", "routes"})
#: Schema differences listed per contract (the rest are counted).
MAX_SCHEMA_CHANGES = 10
_PASSWORD = re.compile(r"(?<=://)([^:/@]*):[^@/]*@")


@dataclass(frozen=True, slots=True)
class Change:
    """One field that differs: ``old``/``new`` are JSON values (None: absent)."""

    field: str  # e.g. scopes, contract.body, rate_limits[per-caller].burst
    old: Any
    new: Any
    summary: str = ""  # for schemas: the pointers that differ

    def as_dict(self) -> dict[str, Any]:
        out = {"field": self.field, "old": self.old, "new": self.new}
        if self.summary:
            out["summary"] = self.summary
        return out


@dataclass(frozen=True, slots=True)
class Section:
    """A route or a provider: added, removed or changed, and how."""

    name: str
    change: str  # added | removed | changed
    changes: tuple[Change, ...] = ()
    widenings: tuple[Finding, ...] = ()
    methods: tuple[str, ...] = ()  # routes: as in the new policy (removed: the old)
    path: str = ""


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    old_version: str
    new_version: str
    old_source: str
    new_source: str
    policy: tuple[Change, ...]  # policy-wide: mode, undeclared routes, sections
    providers: tuple[Section, ...]
    routes: tuple[Section, ...]
    widenings: tuple[Finding, ...]  # every finding (per route ones too)

    @property
    def changed(self) -> bool:
        return bool(self.policy or self.providers or self.routes)

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON form (README "Comparing policies")."""

        def section(s: Section) -> dict[str, Any]:
            out: dict[str, Any] = {"name": s.name, "change": s.change}
            if s.path:
                out["methods"], out["path"] = list(s.methods), s.path
            out["changes"] = [c.as_dict() for c in s.changes]
            out["widenings"] = [_finding(f) for f in s.widenings]
            return out

        return {
            "old": {"source": self.old_source, "version": self.old_version},
            "new": {"source": self.new_source, "version": self.new_version},
            "changed": self.changed,
            "policy": [c.as_dict() for c in self.policy],
            "providers": [section(s) for s in self.providers],
            "routes": [section(s) for s in self.routes],
            "widenings": [_finding(f) for f in self.widenings],
        }


def _finding(f: Finding) -> dict[str, Any]:
    return {"level": f.level, "code": f.code, "message": f.message, "route": f.route}


def compare(old: PolicyConfig, new: PolicyConfig) -> PolicyDiff:
    """What changes from ``old`` to ``new`` (see the module docstring)."""
    found = widenings(old, new)
    by_route: dict[str, list[Finding]] = {}
    for finding in found:
        if finding.route is not None:
            by_route.setdefault(finding.route, []).append(finding)
    policy: list[Change] = []
    for field in dataclasses.fields(old):
        if field.name not in _POLICY_SKIP:
            policy.extend(_walk(field.name, getattr(old, field.name), getattr(new, field.name)))
    # provider findings name their provider first ("provider idp: accepts billing")
    of_provider = {p.name: [f for f in found if f.message.startswith(f"provider {p.name}:")]
                   for p in new.providers}  # fmt: skip
    providers = [
        Section(name, change, changes, tuple(of_provider.get(name, ())))
        for name, change, changes in _by_name(
            {p.name: p for p in old.providers}, {p.name: p for p in new.providers}
        )
    ]
    routes = []
    before = {r.name: r for r in old.routes}
    after = {r.name: r for r in new.routes}
    for name, change, changes in _by_name(before, after, old=old, new=new):
        route = after.get(name) or before[name]
        routes.append(
            Section(
                name,
                change,
                changes,
                tuple(by_route.get(name, ())),
                route.methods,
                route.path,
            )
        )
    return PolicyDiff(
        old.version,
        new.version,
        old.source,
        new.source,
        tuple(policy),
        tuple(providers),
        tuple(routes),
        tuple(found),
    )


def _by_name(
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    old: PolicyConfig | None = None,
    new: PolicyConfig | None = None,
) -> Iterator[tuple[str, str, tuple[Change, ...]]]:
    """(name, added|removed|changed, changes) in the new order, removed ones last."""
    for name, item in after.items():
        prior = before.get(name)
        if prior is None:
            yield name, "added", tuple(_brief(item, new))
            continue
        changes = tuple(_compare_item(prior, item, old, new))
        if changes:
            yield name, "changed", changes
    for name in before:
        if name not in after:
            yield name, "removed", ()


def _compare_item(
    prior: Any, item: Any, old: PolicyConfig | None, new: PolicyConfig | None
) -> Iterator[Change]:
    if type(prior) is not type(item):
        yield Change("type", getattr(prior, "type", None), getattr(item, "type", None))
        return
    for f in dataclasses.fields(prior):
        if f.name in _POSITION_FIELDS:
            continue
        a, b = getattr(prior, f.name), getattr(item, f.name)
        if f.name == "mode" and isinstance(prior, RouteConfig):
            assert old is not None and new is not None
            a, b = a or old.mode, b or new.mode  # the mode that applies
        yield from _walk(f.name, a, b)


def _brief(item: Any, policy: PolicyConfig | None) -> list[Change]:
    """What a new route or provider is: its fields that are not defaults, as changes
    from nothing."""
    out = []
    for f in dataclasses.fields(item):
        value = getattr(item, f.name)
        if f.name in _POSITION_FIELDS or f.name in ("name", "path", "methods"):
            continue  # a route's path and methods head its section
        if f.name == "mode" and isinstance(item, RouteConfig) and policy is not None:
            value = value or policy.mode
        elif value in ((), None, "") or value == f.default:
            continue
        if f.name == "contract":
            out.append(Change(f.name, None, plain(value), _contract_brief(value)))
        else:
            out.append(Change(f.name, None, _claims(value) if f.name == "claims" else plain(value)))
    return out


def _claims(value: Any) -> Any:
    return {claim: list(values) for claim, values in value}


def _contract_brief(contract: Any) -> str:
    parts = []
    if contract.body is not None:
        parts.append("a body schema")
    if contract.parameters:
        parts.append(f"{len(contract.parameters)} parameter(s)")
    parts.append(f"max {contract.max_body_bytes} bytes")
    return ", ".join(parts)


def _key(item: Any) -> str | None:
    """The name an entry of a tuple is compared by (None: compared as a whole)."""
    if not dataclasses.is_dataclass(item):
        return None
    if hasattr(item, "where") and hasattr(item, "name"):
        return f"{item.where}:{item.name}"  # a contract parameter
    for attribute in ("name", "id"):
        value = getattr(item, attribute, None)
        if isinstance(value, str):
            return value
    return None


def _walk(field: str, a: Any, b: Any) -> Iterator[Change]:
    if a == b:
        return
    if field == "claims":  # claim -> allowed values: compared per claim
        old, new = _claims(a), _claims(b)
        for claim in {**old, **new}:
            if old.get(claim) != new.get(claim):
                yield Change(f"claims.{claim}", old.get(claim), new.get(claim))
        return
    if isinstance(a, JsonSchema) or isinstance(b, JsonSchema):
        if getattr(a, "text", None) != getattr(b, "text", None):  # not where it is written
            yield _schema_change(field, a, b)
        return
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        for f in dataclasses.fields(a):
            if f.name not in _POSITION_FIELDS:
                yield from _walk(f"{field}.{f.name}", getattr(a, f.name), getattr(b, f.name))
        return
    if isinstance(a, tuple) and isinstance(b, tuple):
        keys_a = [_key(x) for x in a]
        keys_b = [_key(x) for x in b]
        if (a or b) and None not in keys_a + keys_b:
            named_a = dict(zip(keys_a, a, strict=True))
            named_b = dict(zip(keys_b, b, strict=True))
            for name, item in named_b.items():
                if name not in named_a:
                    yield Change(f"{field}[{name}]", None, plain(item))
                else:
                    yield from _walk(f"{field}[{name}]", named_a[name], item)
            for name, item in named_a.items():
                if name not in named_b:
                    yield Change(f"{field}[{name}]", plain(item), None)
            return
    yield Change(field, plain(a), plain(b))


def _schema_change(field: str, a: JsonSchema | None, b: JsonSchema | None) -> Change:
    old = json.loads(a.text) if a is not None else None
    new = json.loads(b.text) if b is not None else None
    if old is None or new is None:
        return Change(field, old, new, "schema added" if old is None else "schema removed")
    found = list(_pointer_diff("", old, new))
    shown = "; ".join(found[:MAX_SCHEMA_CHANGES])
    more = len(found) - MAX_SCHEMA_CHANGES
    summary = f"{len(found)} change(s): {shown}" + (f"; {more} more" if more > 0 else "")
    return Change(field, old, new, summary)


def _pointer_diff(pointer: str, a: Any, b: Any) -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in b:
            here = f"{pointer}/{_escape(k)}"
            if k not in a:
                yield f"{here} added"
            else:
                yield from _pointer_diff(here, a[k], b[k])
        for k in a:
            if k not in b:
                yield f"{pointer}/{_escape(k)} removed"
    elif a != b:
        yield f"{pointer or '/'} {_short(a)} -> {_short(b)}"


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plain(value: Any) -> Any:
    """A config value as JSON (dataclasses as objects without their positions)."""
    if isinstance(value, JsonSchema):
        return json.loads(value.text)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in _POSITION_FIELDS
        }
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return _PASSWORD.sub(r"\1:***@", value)
    return value
