"""Tokens seen in the audit trail: long-lived ones and rarely used ones, per data class.

Reads every ``*.jsonl`` file of a directory (sorted by name), one JSON object a line.
A record is a decision unless it has a ``kind`` other than ``decision`` (checkpoints
and control-plane records are skipped). A decision record gives at least ``time``
(RFC 3339 or unix seconds), ``route``, ``data_class``, ``identity_type``, ``subject``,
``issuer``, ``token_digest`` (a short digest, never the credential) and, for a JWT,
``token_iat`` and ``token_exp`` (unix seconds; either may be absent). The identity
fields may also sit in an ``identity`` object, as the audit trail writes them
(:mod:`authz.audit`). A record with no ``data_class`` takes its route's class from
the policy.

- **long-lived**: ``token_exp - token_iat`` above a threshold (default 1 h);
- **rarely used**: seen fewer than N times (default 3), or not seen in the last D days
  (default 30) before the report's time.

Both are counted per class (a token is counted in each class it was used on). Memory
is bounded: at most :data:`MAX_TOKENS` distinct tokens are tracked (the rest are
counted as ``untracked``), and a token keeps at most :data:`MAX_ROUTES` route names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

MAX_TOKENS = 200_000
MAX_ROUTES = 8
DAY = 86400.0


@dataclass(slots=True)
class Token:
    """What the audit says of one token (by its digest)."""

    digest: str
    subject: str
    issuer: str
    identity_type: str
    iat: float | None = None
    exp: float | None = None
    uses: int = 0
    first_seen: float = math.inf
    last_seen: float = -math.inf
    classes: dict[str, int] = field(default_factory=dict)  # class -> uses
    routes: list[str] = field(default_factory=list)

    @property
    def lifetime(self) -> float | None:
        if self.iat is None or self.exp is None:
            return None
        return self.exp - self.iat


@dataclass(frozen=True, slots=True)
class Thresholds:
    long_lived: float = 3600.0  # seconds of exp - iat
    rare_uses: int = 3  # fewer uses than this: rarely used
    rare_days: float = 30.0  # not seen for this many days: rarely used


@dataclass(slots=True)
class ClassUsage:
    records: int = 0
    tokens: int = 0
    long_lived: int = 0
    rarely_used: int = 0


@dataclass(slots=True)
class Usage:
    directory: str
    files: int = 0
    records: int = 0  # decision records read
    skipped: int = 0  # records of other kinds (checkpoints, control-plane calls)
    malformed: int = 0  # lines that are not a JSON object with a readable time
    untracked: int = 0  # records of tokens past MAX_TOKENS
    by_class: dict[str, ClassUsage] = field(default_factory=dict)
    long_lived: list[Token] = field(default_factory=list)  # longest first
    rarely_used: list[Token] = field(default_factory=list)  # least recently seen first


def parse_time(value: Any) -> float | None:
    """Unix seconds from a record's ``time``: a number, or RFC 3339 text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # RFC 3339 always has an offset
    return parsed.timestamp()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _records(directory: Path, usage: Usage) -> Iterator[dict[str, Any]]:
    for path in sorted(directory.glob("*.jsonl")):
        if not path.is_file():
            continue
        usage.files += 1
        with path.open("rb") as lines:
            for raw in lines:
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    usage.malformed += 1
                    continue
                if not isinstance(record, dict):
                    usage.malformed += 1
                    continue
                yield record


def scan(
    directory: str | Path,
    *,
    now: float,
    class_of: dict[str, str],
    thresholds: Thresholds = Thresholds(),
) -> Usage:
    """Read the audit files of ``directory``; raises OSError if it cannot be read."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")
    usage = Usage(directory=str(directory))
    tokens: dict[str, Token] = {}
    for record in _records(directory, usage):
        kind = record.get("kind", "decision")
        if kind != "decision":
            usage.skipped += 1
            continue
        when = parse_time(record.get("time"))
        if when is None:
            usage.malformed += 1
            continue
        usage.records += 1
        route = str(record.get("route") or "")
        data_class = str(record.get("data_class") or class_of.get(route, ""))
        usage.by_class.setdefault(data_class, ClassUsage()).records += 1
        digest = record.get("token_digest")
        if not isinstance(digest, str) or not digest:
            continue
        token = tokens.get(digest)
        if token is None:
            if len(tokens) >= MAX_TOKENS:
                usage.untracked += 1
                continue
            nested = record.get("identity")
            who = nested if isinstance(nested, dict) else record
            token = tokens[digest] = Token(
                digest=digest,
                subject=str(who.get("subject") or record.get("subject") or ""),
                issuer=str(who.get("issuer") or record.get("issuer") or ""),
                identity_type=str(who.get("identity_type") or record.get("identity_type") or ""),
            )
        token.uses += 1
        token.first_seen = min(token.first_seen, when)
        token.last_seen = max(token.last_seen, when)
        token.classes[data_class] = token.classes.get(data_class, 0) + 1
        if route and route not in token.routes and len(token.routes) < MAX_ROUTES:
            token.routes.append(route)
        iat, exp = _number(record.get("token_iat")), _number(record.get("token_exp"))
        if iat is not None:
            token.iat = iat
        if exp is not None:
            token.exp = exp
    idle_since = now - thresholds.rare_days * DAY
    for token in tokens.values():
        lifetime = token.lifetime
        long_lived = lifetime is not None and lifetime > thresholds.long_lived
        rare = token.uses < thresholds.rare_uses or token.last_seen < idle_since
        for data_class in token.classes:
            counts = usage.by_class.setdefault(data_class, ClassUsage())
            counts.tokens += 1
            counts.long_lived += long_lived
            counts.rarely_used += rare
        if long_lived:
            usage.long_lived.append(token)
        if rare:
            usage.rarely_used.append(token)
    usage.long_lived.sort(key=lambda t: (-(t.lifetime or 0.0), t.digest))
    usage.rarely_used.sort(key=lambda t: (t.last_seen, t.digest))
    return usage
