"""The report as text (for a person) and as a JSON object (``--json``, for tools)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from authz.report.exposure import ClassExposure, Exposure, KeyStatus, Reach, RouteExposure
from authz.report.usage import ClassUsage, Thresholds, Token, Usage

#: Tokens listed per list in text (``--json`` lists them all).
TEXT_TOKENS = 20


def rfc3339(when: float | None) -> str | None:
    if when is None or not math.isfinite(when):
        return None
    stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return (
                f"{seconds / size:g}{unit}"
                if seconds % size == 0
                else f"{seconds / size:.1f}{unit}"
            )
    return f"{seconds:g}s"


# --------------------------------------------------------------------------- JSON


def _reach_json(x: Reach) -> dict[str, Any]:
    return {
        "provider": x.provider,
        "type": x.type,
        "who": list(x.who),
        "claims": {name: list(values) for name, values in x.claims},
    }


def _route_json(r: RouteExposure) -> dict[str, Any]:
    return {
        "name": r.name,
        "methods": list(r.methods),
        "path": r.path,
        "hosts": list(r.hosts),
        "declared": r.declared,
        "fields": {pointer: c for pointer, c in r.fields},
        "public": r.public,
        "scopes": list(r.scopes),
        "reached_by": [_reach_json(x) for x in r.reach],
        "origin": r.origin,
    }


def _key_json(k: KeyStatus) -> dict[str, Any]:
    return {
        "provider": k.provider,
        "id": k.id,
        "owner": k.owner,
        "scopes": list(k.scopes),
        "created": rfc3339(k.created_at),
        "expires": rfc3339(k.expires_at),
        "age_days": None if k.age_days is None else round(k.age_days, 1),
        "days_left": None if k.days_left is None else round(k.days_left, 1),
        "status": k.status,
        "routes": list(k.routes),
        "classes": list(k.classes),
    }


def _token_json(t: Token) -> dict[str, Any]:
    return {
        "token_digest": t.digest,
        "subject": t.subject,
        "issuer": t.issuer,
        "identity_type": t.identity_type,
        "lifetime_s": t.lifetime,
        "uses": t.uses,
        "first_seen": rfc3339(t.first_seen),
        "last_seen": rfc3339(t.last_seen),
        "classes": dict(sorted(t.classes.items())),
        "routes": list(t.routes),
    }


def _class_json(c: ClassExposure, used: ClassUsage | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "data_class": c.data_class,
        "routes": [_route_json(r) for r in c.routes],
        "public_routes": c.public_routes,
        "providers": list(c.providers),
        "scopes": list(c.scopes),
        "spiffe_ids": list(c.spiffe_ids),
        "subjects": list(c.subjects),
        "api_keys": list(c.api_keys),
    }
    if used is not None:
        out["audit"] = {
            "records": used.records,
            "tokens": used.tokens,
            "long_lived": used.long_lived,
            "rarely_used": used.rarely_used,
        }
    return out


def as_json(exp: Exposure, usage: Usage | None, thresholds: Thresholds) -> dict[str, Any]:
    out: dict[str, Any] = {
        "policy": exp.source,
        "version": exp.version,
        "as_of": rfc3339(exp.now),
        "thresholds": {
            "expiry_days": exp.expiry_days,
            "long_lived_s": thresholds.long_lived,
            "rare_uses": thresholds.rare_uses,
            "rare_days": thresholds.rare_days,
        },
        "classes": [
            _class_json(
                c, None if usage is None else usage.by_class.get(c.data_class, ClassUsage())
            )
            for c in exp.classes
        ],
        "api_keys": [_key_json(k) for k in exp.keys],
    }
    if usage is not None:
        out["audit"] = {
            "directory": usage.directory,
            "files": usage.files,
            "records": usage.records,
            "skipped": usage.skipped,
            "malformed": usage.malformed,
            "untracked": usage.untracked,
            "unrouted_records": usage.by_class.get("", ClassUsage()).records,
            "long_lived": [_token_json(t) for t in usage.long_lived],
            "rarely_used": [_token_json(t) for t in usage.rarely_used],
        }
    return out


# --------------------------------------------------------------------------- text


def _who(x: Reach) -> str:
    if x.type == "public":
        return "anyone (public route)"
    if x.type == "jwt":
        subjects = next((v for n, v in x.claims if n == "sub"), ())
        who = f"subjects {', '.join(subjects)}" if subjects else "any subject"
        who += f" of issuer {x.who[0]}"
    elif x.type == "api_key":
        who = f"keys {', '.join(x.who)}" if x.who else "no key (none passes the route's checks)"
    else:
        who = ", ".join(x.who)
    text = f"{x.type} {x.provider}: {who}"
    others = [(n, v) for n, v in x.claims if not (x.type == "jwt" and n == "sub")]
    if others:
        text += " with " + ", ".join(f"{n} in {{{', '.join(v)}}}" for n, v in others)
    return text


def _class_text(c: ClassExposure) -> list[str]:
    n = len(c.routes)
    lines = [f"{c.data_class}: {n} route{'s' if n != 1 else ''}"]
    parts = [
        (f"{c.public_routes} public", c.public_routes),
        ("providers " + ", ".join(c.providers), c.providers),
        ("scopes " + " ".join(c.scopes), c.scopes),
        ("SPIFFE IDs " + ", ".join(c.spiffe_ids), c.spiffe_ids),
        ("subjects " + ", ".join(c.subjects), c.subjects),
        ("API keys " + ", ".join(c.api_keys), c.api_keys),
    ]
    shown = [text for text, present in parts if present]
    if shown:
        lines[0] += "; " + "; ".join(shown)
    for r in c.routes:
        lines += _route_text(r)
    return lines


def _route_text(r: RouteExposure) -> list[str]:
    hosts = f" on {', '.join(r.hosts)}" if r.hosts else ""
    why = f"declared {r.declared}" if r.declared else "by default"
    if r.fields:
        why += "; fields " + ", ".join(f"{p} {c}" for p, c in r.fields)
    lines = [f"  {r.name}: {' '.join(r.methods)} {r.path}{hosts} ({why})"]
    lines += [f"      reached by {_who(x)}" for x in r.reach]
    if r.scopes:
        lines.append(f"      scopes {' '.join(r.scopes)}")
    return lines


def _key_text(k: KeyStatus) -> str:
    created = rfc3339(k.created_at)
    age = (
        f"created {created[:10]} ({k.age_days:.0f} days old)"
        if created and k.age_days is not None
        else "created: not declared"
    )
    expires = rfc3339(k.expires_at)
    if expires is None or k.days_left is None:
        left = "no expiry"
    elif k.status == "expired":
        left = f"expired {expires[:10]}"
    else:
        left = f"expires {expires[:10]} (in {k.days_left:.0f} days)"
    flag = {"ok": "", "near_expiry": "  NEAR EXPIRY", "expired": "  EXPIRED"}[k.status]
    reach = ", ".join(k.routes) if k.routes else "no route"
    classes = f" [{', '.join(k.classes)}]" if k.classes else ""
    return f"  {k.provider}/{k.id} (owner {k.owner}): {age}, {left}{flag}; reaches {reach}{classes}"


def _token_text(t: Token) -> str:
    lifetime = f"lifetime {_duration(t.lifetime)}, " if t.lifetime is not None else ""
    last = rfc3339(t.last_seen) or "?"
    classes = ", ".join(sorted(t.classes, key=str)) or "-"
    return (
        f"    {t.digest} {t.identity_type or '?'} {t.subject or '-'} ({t.issuer or '-'}): "
        f"{lifetime}{t.uses} use{'s' if t.uses != 1 else ''}, last {last}, on {classes}"
    )


def _tokens_text(title: str, tokens: list[Token]) -> list[str]:
    lines = [f"  {title}: {len(tokens)}"]
    lines += [_token_text(t) for t in tokens[:TEXT_TOKENS]]
    if len(tokens) > TEXT_TOKENS:
        lines.append(f"    ... and {len(tokens) - TEXT_TOKENS} more (--json lists them all)")
    return lines


def as_text(exp: Exposure, usage: Usage | None, thresholds: Thresholds) -> str:
    lines = [f"{exp.source}: version {exp.version}, as of {rfc3339(exp.now)}", ""]
    for c in exp.classes:
        lines += _class_text(c)
    lines.append("")
    near = sum(1 for k in exp.keys if k.status != "ok")
    lines.append(
        f"static API keys: {len(exp.keys)}, {near} expired or expiring within "
        f"{exp.expiry_days:g} days"
    )
    lines += [_key_text(k) for k in exp.keys]
    if usage is not None:
        lines += ["", _usage_head(usage)]
        lines.append(
            f"  {'class':<13} {'records':>8} {'tokens':>7} {'long-lived':>11} {'rarely used':>12}"
        )
        for c in exp.classes:
            u = usage.by_class.get(c.data_class, ClassUsage())
            lines.append(
                f"  {c.data_class:<13} {u.records:>8} {u.tokens:>7} {u.long_lived:>11} "
                f"{u.rarely_used:>12}"
            )
        unrouted = usage.by_class.get("")
        if unrouted is not None:
            lines.append(
                f"  {'(no route)':<13} {unrouted.records:>8} {unrouted.tokens:>7} "
                f"{unrouted.long_lived:>11} {unrouted.rarely_used:>12}"
            )
        lines += _tokens_text(
            f"long-lived tokens (exp - iat > {_duration(thresholds.long_lived)})", usage.long_lived
        )
        lines += _tokens_text(
            f"rarely used tokens (fewer than {thresholds.rare_uses} uses, or none in the last "
            f"{thresholds.rare_days:g} days)",
            usage.rarely_used,
        )
    return "\n".join(lines) + "\n"


def _usage_head(usage: Usage) -> str:
    extra = [f"{usage.skipped} other records skipped"]
    if usage.malformed:
        extra.append(f"{usage.malformed} malformed lines")
    if usage.untracked:
        extra.append(f"{usage.untracked} records of untracked tokens")
    return (
        f"audit {usage.directory}: {usage.files} files, {usage.records} decision records "
        f"({', '.join(extra)})"
    )
