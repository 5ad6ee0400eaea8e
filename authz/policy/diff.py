"""What a policy reload opens up: compare two compiled configs, list the widenings.

:func:`widenings` is pure: it takes the active and the candidate
:class:`~authz.policy.config.PolicyConfig` and returns one :class:`Finding` per
change that lets more requests through. The server logs each finding as one line
(:func:`log_widenings`) when it swaps a policy in (warnings for what a truncated or
mistaken edit most often opens up, info for ordinary grants). It never refuses a reload: a widening
may be intended; the log line is there so that an unintended one is seen.

Routes are compared by name. A removed route is not a widening: its requests
become undeclared, which the ``undeclared_routes`` comparison covers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from authz.policy.config import (
    ApiKeyProviderConfig,
    JwtProviderConfig,
    MtlsProviderConfig,
    PolicyConfig,
    RouteConfig,
)
from authz.policy.ratelimit_config import RuleConfig

Level = Literal["warning", "info"]
_MAX_INFO_FINDINGS = 20  # widening info lines logged per reload (warnings: all)


@dataclass(frozen=True, slots=True)
class Finding:
    """One way a new policy is wider than the old one."""

    level: Level
    code: str  # stable snake_case kind, e.g. ``route_public``
    message: str  # one line, names the route and what changed
    route: str | None = None  # None: a policy-wide change


def widenings(old: PolicyConfig, new: PolicyConfig) -> list[Finding]:
    """Every change from ``old`` to ``new`` that widens access, policy-wide first."""
    out: list[Finding] = []
    if old.mode == "enforce" and new.mode == "monitor":
        out.append(
            Finding(
                "warning",
                "policy_monitor",
                "policy mode enforce -> monitor: denials are no longer enforced "
                "on routes without their own mode",
            )
        )
    if old.undeclared_routes == "deny" and new.undeclared_routes == "monitor":
        out.append(
            Finding(
                "warning",
                "undeclared_monitor",
                "undeclared_routes deny -> monitor: requests to undeclared routes are allowed",
            )
        )
    if _enforces(old) and not _enforces(new):
        out.append(
            Finding(
                "warning",
                "enforcement_removed",
                "no enforcement: or detection: section any more: the blocks, revocations, "
                "throttles and step-ups in force are no longer checked",
            )
        )
    out.extend(_rules("policy", None, old.rate_limits.rules, new.rate_limits.rules))
    out.extend(_providers(old, new))
    before = {r.name: r for r in old.routes}
    for route in new.routes:
        prior = before.get(route.name)
        if prior is None:
            out.append(
                Finding(
                    "info",
                    "route_added",
                    f"route {route.name}: new route {' '.join(route.methods)} {route.path}"
                    + (" (public)" if route.public else ""),
                    route.name,
                )
            )
            continue
        out.extend(_route(old, new, prior, route))
    return out


def _enforces(config: PolicyConfig) -> bool:
    """Whether a policy checks automatic responses (authz.respond.stage.enforcement_of)."""
    return config.enforcement is not None or getattr(config, "detection", None) is not None


def _providers(old: PolicyConfig, new: PolicyConfig) -> list[Finding]:
    """Providers (by name) that accept more: trust domains, audiences, issuer, keys."""
    before = {p.name: p for p in old.providers}
    out: list[Finding] = []

    def add(level: Level, code: str, name: str, message: str) -> None:
        out.append(Finding(level, code, f"provider {name}: {message}"))

    for p in new.providers:
        q = before.get(p.name)
        if isinstance(p, MtlsProviderConfig) and isinstance(q, MtlsProviderConfig):
            domains = [d for d in p.trust_domains if d not in q.trust_domains]
            if domains:
                add("warning", "trust_domains_added", p.name, f"trusts {', '.join(domains)}")
            bundles, was = dict(p.trust_bundles), dict(q.trust_bundles)
            if was and not bundles:
                add(
                    "warning",
                    "trust_bundles_removed",
                    p.name,
                    "no longer one CA bundle per trust domain (any CA Envoy trusts vouches for "
                    "any domain)",
                )
            changed = [d for d, f in sorted(bundles.items()) if was and was.get(d) != f]
            if changed:
                add(
                    "warning",
                    "trust_bundles_changed",
                    p.name,
                    "other CA bundle for " + ", ".join(changed),
                )
        elif isinstance(p, JwtProviderConfig) and isinstance(q, JwtProviderConfig):
            if p.issuer != q.issuer:
                add("warning", "issuer_changed", p.name, f"issuer {q.issuer} -> {p.issuer}")
            audiences = [a for a in p.audiences if a not in q.audiences]
            if audiences:
                add("warning", "audiences_added", p.name, f"accepts {', '.join(audiences)}")
        elif isinstance(p, ApiKeyProviderConfig) and isinstance(q, ApiKeyProviderConfig):
            ids = {k.id for k in q.keys}
            added = [k.id for k in p.keys if k.id not in ids]
            if added:
                add("info", "api_keys_added", p.name, f"new key(s) {', '.join(added)}")
    return out


def _route(
    old_policy: PolicyConfig, new_policy: PolicyConfig, old: RouteConfig, new: RouteConfig
) -> list[Finding]:
    name = new.name
    out: list[Finding] = []

    def warn(code: str, message: str) -> None:
        out.append(Finding("warning", code, f"route {name}: {message}", name))

    def info(code: str, message: str) -> None:
        out.append(Finding("info", code, f"route {name}: {message}", name))

    old_mode = old.mode or old_policy.mode
    new_mode = new.mode or new_policy.mode
    # A change that only follows the policy's mode is reported once, policy-wide.
    if old_mode == "enforce" and new_mode == "monitor" and new.mode is not None:
        warn("route_monitor", "mode enforce -> monitor: its denials are no longer enforced")
    out.extend(_rules("route", name, old.rate_limits, new.rate_limits))
    if old.public:
        return out  # nothing was required before: nothing more can be dropped
    if new.public:
        warn("route_public", "becomes public: no credential is required any more")
        return out
    if not new.providers:
        warn("providers_removed", "loses all of its providers")
    gained = [p for p in new.providers if p not in old.providers]
    if gained:
        warn("provider_added", f"gains provider(s) {', '.join(gained)}")
    lost_scopes = [s for s in old.scopes if s not in new.scopes]
    if lost_scopes:
        warn("scopes_removed", f"no longer requires scope(s) {', '.join(lost_scopes)}")
    new_claims = dict(new.claims)
    for claim, values in old.claims:
        if claim not in new_claims:
            warn("claim_removed", f"no longer requires claim {claim}")
            continue
        added = [v for v in new_claims[claim] if v not in values]
        if added:
            info("claim_values_added", f"claim {claim} also accepts {', '.join(added)}")
    old_ids = (*old.spiffe_ids, *(p + "*" for p in old.spiffe_id_prefixes))
    new_ids = (*new.spiffe_ids, *(p + "*" for p in new.spiffe_id_prefixes))
    if old_ids and not new_ids:
        # An empty allowlist admits every SPIFFE ID of the mtls providers' trust domains.
        entries = f"{len(old_ids)} entr{'y' if len(old_ids) == 1 else 'ies'}"
        warn(
            "spiffe_ids_removed",
            f"loses its spiffe_ids ({entries}): every SPIFFE ID of the trusted domains is allowed",
        )
    elif old_ids:
        added = [s for s in new_ids if s not in old_ids]
        if added:
            info("spiffe_ids_added", f"also allows SPIFFE ID(s) {', '.join(added)}")
    return out


def _rules(
    where: str, route: str | None, old: tuple[RuleConfig, ...], new: tuple[RuleConfig, ...]
) -> list[Finding]:
    """Rate limits and concurrency caps removed, raised or turned into shadow rules."""
    prefix = f"route {route}: " if route is not None else ""
    after = {r.name: r for r in new}
    out: list[Finding] = []
    for rule in old:
        if rule.shadow:
            continue  # it limited nothing before
        current = after.get(rule.name)
        if current is None:
            change = "removed"
        elif current.shadow:
            change = "now shadow (counts, never limits)"
        elif current.concurrency != rule.concurrency:
            change = f"replaced ({_describe(rule)} -> {_describe(current)})"
        elif _raised(rule, current):
            change = f"raised ({_describe(rule)} -> {_describe(current)})"
        else:
            continue
        code = "rate_limit_removed" if current is None else "rate_limit_raised"
        out.append(Finding("info", code, f"{prefix}{where} rate limit {rule.name} {change}", route))
    return out


def _raised(old: RuleConfig, new: RuleConfig) -> bool:
    """Whether ``new`` admits more than ``old`` (both of one kind)."""
    if old.concurrency:
        return new.burst > old.burst
    # tokens per second, then the burst; a changed key may also widen but is not a raise
    return new.limit * old.period > old.limit * new.period or new.burst > old.burst


def _describe(rule: RuleConfig) -> str:
    if rule.concurrency:
        return f"concurrency {rule.burst}"
    return f"{rule.limit}/{rule.period:g}s burst {rule.burst}"


def log_widenings(old: PolicyConfig, new: PolicyConfig, log: logging.Logger) -> None:
    """One line per finding: every warning; info lines up to a bound (a policy that
    adds a thousand routes should not write a thousand lines)."""
    findings = widenings(old, new)
    infos = [f for f in findings if f.level == "info"]
    for f in findings:
        if f.level == "warning":
            log.warning("policy %s widens access: %s", new.version, f.message)
    for f in infos[:_MAX_INFO_FINDINGS]:
        log.info("policy %s widens access: %s", new.version, f.message)
    if len(infos) > _MAX_INFO_FINDINGS:
        log.info(
            "policy %s widens access: %d more grants not listed",
            new.version,
            len(infos) - _MAX_INFO_FINDINGS,
        )
