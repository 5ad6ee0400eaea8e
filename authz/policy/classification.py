"""Data classification: a route's class and the minimum controls each class needs.

Classes, lowest first: ``public``, ``internal``, ``confidential``, ``pii``,
``regulated`` (:data:`CLASSES`). A route declares one with ``data_class:`` (an
OpenAPI operation with ``x-data-class:``); a body field declares one with
``x-data-class:`` in the route's JSON Schema (or the OpenAPI schema, ``$ref``
followed). A route's **effective** class is the highest of its own and its fields':
a route that accepts a field of personal data carries personal data, whatever it
says of itself. The loader freezes the result in the
:class:`~authz.policy.config.RouteConfig` (``data_class``, ``declared_data_class``,
``field_data_classes``).

**Default when absent:** ``internal``; ``public`` for a ``public: true`` route (a route
anyone may call can carry public data only, so that is the one class it may have).
``internal`` because it is what an undeclared route usually is (for callers the
gateway knows, no special handling): it adds no control, so every policy written
before classes existed stays valid, and it does not claim ``public``, which would
hide the route from the report's view of what is exposed. A reviewer who wants
every route classified on purpose reads ``declared_data_class`` (``""``: defaulted).

The controls (:data:`RULES`, one row each, checked by the loader so that ``authz
validate`` prints each with its place in the file):

- a ``public: true`` route carries public data only;
- ``pii`` and ``regulated`` routes take no API-key provider (a static key names no
  person and is not bound to its sender), need a rate limit per identity (a rate
  rule, not shadow, on the route or global, whose key tells apart the callers of
  every provider of the route: ``subject`` does for all, ``spiffe_id`` for mTLS
  callers, ``claim:NAME`` for JWT callers), and need the audit trail on;
- ``regulated`` routes also need every credential bound to its sender: the route's
  ``sender_constrained: true``, or providers that only take bound credentials (mTLS,
  a JWT provider with ``dpop: required``; :func:`sender_constrained`).

A route's providers are alternatives (any one admits a request), so a rule on
providers holds only when every provider meets it; each one that does not is
reported at its own place (``routes[i].providers[j]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from authz.policy.audit_config import AuditConfig
from authz.policy.config import DecisionLogConfig, ProviderConfig, RouteConfig
from authz.policy.document import JsonPath
from authz.policy.ratelimit_config import RuleConfig

#: Data classes, lowest first: the order is the rank.
CLASSES = ("public", "internal", "confidential", "pii", "regulated")
RANK = {name: i for i, name in enumerate(CLASSES)}
DEFAULT_CLASS = "internal"
ANNOTATION = "x-data-class"
#: Key part -> the provider types whose callers it tells apart (see
#: :mod:`authz.ratelimit.keys`: ``spiffe_id`` of a JWT caller is the connection's
#: peer, ``api_key`` of anyone else is ""). ``claim:NAME`` tells JWT callers apart: the
#: operator names the claim that identifies one, e.g. ``claim:client_id``.
IDENTIFIES = {
    "subject": ("jwt", "mtls", "api_key"),
    "spiffe_id": ("mtls",),
    "api_key": ("api_key",),
}

Problem = Callable[[JsonPath, str], None]


def highest(*classes: str) -> str:
    """The highest of ``classes`` (the empty ones ignored); ``""`` if none."""
    found = [c for c in classes if c in RANK]
    return max(found, key=RANK.__getitem__) if found else ""


def effective_class(declared: str, public: bool, fields: tuple[tuple[str, str], ...]) -> str:
    """A route's class: the highest of its declared one (or the default) and its fields'."""
    own = declared or ("public" if public else DEFAULT_CLASS)
    return highest(own, *(c for _, c in fields))


# --------------------------------------------------------------------------- fields


def field_classes(
    schema: Any,
    at: JsonPath,
    problem: Problem,
    *,
    root: Any = None,
    root_at: JsonPath = (),
) -> tuple[tuple[str, str], ...]:
    """(JSON pointer, class) of every ``x-data-class`` in a body schema, the highest per
    pointer; ``*`` stands for any array item or any other member. Local ``$ref``\\ s are
    resolved against ``root`` at ``root_at`` (default: the schema itself, at ``at``; an
    OpenAPI document passes itself, so ``#/components/schemas/...`` resolves). A value
    that is no class is reported at its place."""
    if root is None:
        root, root_at = schema, at
    found: dict[str, str] = {}
    for pointer, value, where in _annotations(schema, at, "", root, root_at, frozenset()):
        if not isinstance(value, str) or value not in RANK:
            problem(where, f"{ANNOTATION} must be one of {', '.join(CLASSES)}")
            continue
        found[pointer] = highest(found.get(pointer, ""), value)
    return tuple(sorted(found.items()))


_SAME_PLACE = ("allOf", "anyOf", "oneOf")
_ANY_MEMBER_ONE = ("items", "additionalProperties", "unevaluatedProperties", "contains")
_MAX_DEPTH = 64


def _annotations(
    node: Any,
    at: JsonPath,
    pointer: str,
    root: Any,
    root_at: JsonPath,
    refs: frozenset[str],
) -> Iterator[tuple[str, Any, JsonPath]]:
    if not isinstance(node, dict) or len(at) - len(root_at) > _MAX_DEPTH:
        return
    if ANNOTATION in node:
        yield pointer or "/", node[ANNOTATION], (*at, ANNOTATION)
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and ref not in refs:
        target = _resolve(root, ref)
        if target is not None:
            parts = _ref_parts(ref)
            yield from _annotations(
                target, (*root_at, *parts), pointer, root, root_at, refs | {ref}
            )
    for key in _SAME_PLACE:
        subs = node.get(key)
        for i, sub in enumerate(subs if isinstance(subs, list) else ()):
            yield from _annotations(sub, (*at, key, i), pointer, root, root_at, refs)
    for key in ("then", "else"):
        yield from _annotations(node.get(key), (*at, key), pointer, root, root_at, refs)
    props = node.get("properties")
    for name, sub in props.items() if isinstance(props, dict) else ():
        child = f"{pointer}/{str(name).replace('~', '~0').replace('/', '~1')}"
        yield from _annotations(sub, (*at, "properties", name), child, root, root_at, refs)
    patterns = node.get("patternProperties")
    for name, sub in patterns.items() if isinstance(patterns, dict) else ():
        yield from _annotations(
            sub, (*at, "patternProperties", name), f"{pointer}/*", root, root_at, refs
        )
    for key in _ANY_MEMBER_ONE:
        yield from _annotations(node.get(key), (*at, key), f"{pointer}/*", root, root_at, refs)
    prefix = node.get("prefixItems")
    for i, sub in enumerate(prefix if isinstance(prefix, list) else ()):
        yield from _annotations(sub, (*at, "prefixItems", i), f"{pointer}/{i}", root, root_at, refs)


def _ref_parts(ref: str) -> tuple[str, ...]:
    body = ref[1:].lstrip("/")
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in body.split("/")) if body else ()


def _resolve(root: Any, ref: str) -> Any:
    node = root
    for part in _ref_parts(ref):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


# --------------------------------------------------------------------------- controls


_NO_LOG_CONFIG = DecisionLogConfig()


@dataclass(frozen=True, slots=True)
class Controls:
    """What the policy offers a route beyond its own fields, read once by the loader
    from the frozen configuration (never the raw document)."""

    providers: tuple[ProviderConfig, ...]
    global_rules: tuple[RuleConfig, ...]
    #: the policy's audit trail (its frozen ``audit:`` section), None when it has none
    audit: AuditConfig | None = None
    #: the policy's decision log (:class:`DecisionLogConfig`)
    decision_log: DecisionLogConfig = _NO_LOG_CONFIG
    #: an ``audit:`` section is written but did not load: its own errors are reported,
    #: and the routes are not also told that the audit trail is off
    audit_invalid: bool = False

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)

    @property
    def audit_on(self) -> bool:
        """Every access is recorded: the audit trail is configured (a frozen
        :class:`AuditConfig`; it fails closed: a record it cannot take is a 503
        ``audit_unavailable``, never an unrecorded allow), or, weaker and accepted for
        policies without a signing key, the decision log fails closed
        (``decision_log: {on_failure: deny}``: no allow unrecorded, but nothing proves
        the log untouched)."""
        return (
            self.audit is not None or self.audit_invalid or self.decision_log.on_failure == "deny"
        )


def sender_constrained(provider: ProviderConfig) -> bool:
    """Whether every credential this provider accepts is bound to its sender.

    mTLS: the certificate is proven in the handshake. The hook for sender-constrained
    tokens (DPoP, RFC 9449; certificate-bound tokens, RFC 8705): when a JWT provider
    can require them, it answers True here and regulated routes may use it.
    """
    if provider.type == "mtls":
        return True
    dpop = getattr(provider, "dpop", None)  # a JWT provider with dpop: required
    return dpop is not None and dpop.mode == "required"


def per_identity(rule: RuleConfig, kinds: frozenset[str]) -> bool:
    """A rate rule (not a concurrency cap, not shadow) whose key tells apart the callers
    of every provider type in ``kinds``."""
    if rule.concurrency or rule.shadow or not kinds:
        return False
    told: set[str] = set()
    for part in rule.key:
        told.update(("jwt",) if part.startswith("claim:") else IDENTIFIES.get(part, ()))
    return kinds <= told


@dataclass(frozen=True, slots=True)
class Finding:
    """One unmet control: where on the route (a field path under the route), and why."""

    rule: str
    field: JsonPath
    message: str


Check = Callable[[RouteConfig, Controls], Iterator[tuple[JsonPath, dict[str, str]]]]


@dataclass(frozen=True, slots=True)
class Rule:
    """One minimum control: the classes it applies to, its check, its message."""

    name: str
    classes: tuple[str, ...]
    #: yields (field under the route, message values) for each place it is unmet
    check: Check
    message: str  # str.format'ed with {cls}, {source} and what the check yields


def _public_route(
    route: RouteConfig, controls: Controls
) -> Iterator[tuple[JsonPath, dict[str, str]]]:
    if route.public:
        yield ("data_class",), {}


def _api_key_providers(
    route: RouteConfig, controls: Controls
) -> Iterator[tuple[JsonPath, dict[str, str]]]:
    for j, name in enumerate(route.providers):
        provider = controls.provider(name)
        if provider is not None and provider.type == "api_key":
            yield ("providers", j), {"provider": name}


def _rate_limit(
    route: RouteConfig, controls: Controls
) -> Iterator[tuple[JsonPath, dict[str, str]]]:
    kinds = frozenset(p.type for n in route.providers if (p := controls.provider(n)))
    if not route.public and not any(
        per_identity(r, kinds) for r in (*route.rate_limits, *controls.global_rules)
    ):
        yield ("rate_limits",), {}


def _audit(route: RouteConfig, controls: Controls) -> Iterator[tuple[JsonPath, dict[str, str]]]:
    if not controls.audit_on:
        yield ("data_class",), {}


def _sender_bound(
    route: RouteConfig, controls: Controls
) -> Iterator[tuple[JsonPath, dict[str, str]]]:
    if route.sender_constrained:
        return  # the route itself refuses every credential not bound to its sender
    for j, name in enumerate(route.providers):
        provider = controls.provider(name)
        if provider is not None and not sender_constrained(provider):
            yield ("providers", j), {"provider": name, "type": provider.type}


#: The minimum controls, one row per rule.
RULES: tuple[Rule, ...] = (
    Rule(
        "public_route_class",
        ("internal", "confidential", "pii", "regulated"),
        _public_route,
        "a public route (public: true) serves anyone, so it carries public data only, "
        "not {cls}{source}: give it providers, or classify its data public",
    ),
    Rule(
        "no_api_key",
        ("pii", "regulated"),
        _api_key_providers,
        "a {cls} route{source} takes no API-key provider ({provider!r}): a static key "
        "names no person and is not bound to its sender; use jwt or mtls providers",
    ),
    Rule(
        "per_identity_rate_limit",
        ("pii", "regulated"),
        _rate_limit,
        "a {cls} route{source} needs a rate limit per identity (a rate rule on the route "
        "or global, not shadow, keyed by subject, or spiffe_id for mtls and claim:NAME "
        "for jwt callers), so "
        "that no one caller reads it in bulk",
    ),
    Rule(
        "audit_on",
        ("pii", "regulated"),
        _audit,
        "a {cls} route{source} needs the audit trail on (an audit: section with dir and "
        "signing_key; at least decision_log: {{on_failure: deny}}), so that every access "
        "is recorded",
    ),
    Rule(
        "sender_constrained",
        ("regulated",),
        _sender_bound,
        "a regulated route{source} needs every credential bound to its sender: provider "
        "{provider!r} ({type}) is not; use an mtls provider, dpop: required on the "
        "provider, or sender_constrained: true on the route",
    ),
)


def check_route(route: RouteConfig, controls: Controls) -> list[Finding]:
    """Every control the route's class needs and the route lacks, in :data:`RULES` order;
    one finding per place (the first rule's), as the loader reports one problem per
    place: an API-key provider is reported as such, not also as not sender-constrained,
    and a public route with a pii field as misclassified, not also as lacking audit."""
    findings: dict[JsonPath, Finding] = {}
    source = _source(route)
    for rule in RULES:
        if route.data_class not in rule.classes:
            continue
        for field, values in rule.check(route, controls):
            if field not in findings:
                message = rule.message.format(cls=route.data_class, source=source, **values)
                findings[field] = Finding(rule.name, field, message)
    return list(findings.values())


def _source(route: RouteConfig) -> str:
    """`` (from body field /x)`` when the class comes from a field, not the route."""
    own = route.declared_data_class or ("public" if route.public else DEFAULT_CLASS)
    if RANK.get(own, 0) >= RANK.get(route.data_class, 0):
        return ""
    fields = [p for p, c in route.field_data_classes if c == route.data_class]
    return f" (from body field {', '.join(fields)})" if fields else ""
