"""The ``detection`` section of a policy file -> :mod:`authz.policy.detection_config`.

Called by :mod:`authz.policy.loader` after the JSON Schema check (which rejects
unknown fields, bad enums and malformed durations with their location); this adds
the semantic checks at their location through the loader's reporter: a response
that cannot apply to its target (revoking an address), a window shorter than the
baselines' bucket, a honeypot pattern that a route of the policy declares.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Protocol

from authz.pathtemplate import TemplateError, parse_template
from authz.policy.detection_config import (
    CredentialStuffingConfig,
    DataVolumeConfig,
    DetectionConfig,
    DetectorConfig,
    EnumerationConfig,
    HoneypotConfig,
    TablesConfig,
    TokenSharingConfig,
)
from authz.policy.document import JsonPath, parse_duration

_KINDS: dict[str, type[DetectorConfig]] = {
    "honeypot": HoneypotConfig,
    "credential_stuffing": CredentialStuffingConfig,
    "enumeration": EnumerationConfig,
    "token_sharing": TokenSharingConfig,
    "data_volume": DataVolumeConfig,
}
_DURATIONS = frozenset({"ttl", "window"})
#: revocation applies to credentials; a block or throttle to anything
_REVOCABLE = frozenset({"token", "api_key", "subject", "identity"})


class Reporter(Protocol):
    def problem(self, jpath: JsonPath, message: str) -> None: ...

    def where(self, jpath: JsonPath, *, key: bool = False) -> str: ...


def honeypot_pattern(pattern: str) -> re.Pattern[str]:
    """A honeypot path pattern as a regex: ``*`` within one segment, ``**`` any depth."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def load_detection(
    doc: dict[str, Any], reporter: Reporter, routes: Any = ()
) -> DetectionConfig | None:
    """The section, or None when the policy has none. ``routes`` (RouteConfig) lets a
    honeypot pattern that a declared route matches be reported."""
    spec = doc.get("detection")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        return None  # the schema reported it
    at: JsonPath = ("detection",)
    defaults = DetectionConfig()
    values: dict[str, Any] = {"location": reporter.where(at)}
    for key in ("warmup", "interval", "bucket"):
        if key in spec:
            values[key] = parse_duration(spec[key])
    for key in ("mode", "queue", "alpha", "scorer"):
        if key in spec:
            values[key] = spec[key]
    if values.get("interval", defaults.interval) <= 0:
        reporter.problem((*at, "interval"), "must be more than zero")
    bucket = values.get("bucket", defaults.bucket)
    if bucket <= 0:
        reporter.problem((*at, "bucket"), "must be more than zero")
        bucket = defaults.bucket
    tables = spec.get("tables")
    if isinstance(tables, dict):
        values["tables"] = TablesConfig(**{k: int(v) for k, v in tables.items()})
    detectors = spec.get("detectors")
    detectors = detectors if isinstance(detectors, dict) else {}
    for name, kind in _KINDS.items():
        dspec = detectors.get(name)
        if isinstance(dspec, dict):
            values[name] = _detector(kind, dspec, (*at, "detectors", name), reporter, bucket)
    limits = doc.get("rate_limits")
    hops = limits.get("trusted_hops") if isinstance(limits, dict) else None
    if type(hops) is int and hops > 0:  # (the rate-limit loader reports a bad value)
        values["trusted_hops"] = hops
    config = DetectionConfig(**values)
    _check_honeypot(config.honeypot, reporter, (*at, "detectors", "honeypot"), routes)
    return config


def _detector(
    kind: type[DetectorConfig],
    spec: dict[str, Any],
    at: JsonPath,
    reporter: Reporter,
    bucket: float,
) -> DetectorConfig:
    values: dict[str, Any] = {"location": reporter.where(at)}
    names = {f.name for f in dataclasses.fields(kind)}
    for key, value in spec.items():
        if key not in names:
            continue  # the schema reported it
        if key in _DURATIONS:
            values[key] = parse_duration(value)
        elif key == "paths":
            values[key] = tuple(value)
        else:
            values[key] = value
    config = kind(**values)
    if config.ttl <= 0:
        reporter.problem((*at, "ttl"), "must be more than zero")
    window = getattr(config, "window", None)
    if window is not None and window < bucket:
        reporter.problem(
            (*at, "window"),
            f"a window shorter than the baselines' bucket ({bucket:g}s) cannot be measured",
        )
    if config.response == "revoke" and config.target not in _REVOCABLE:
        reporter.problem(
            (*at, "response"),
            f"revoke applies to a credential or subject, not to target {config.target!r} "
            "(use block)",
        )
    if config.response == "step_up" and config.target in ("address", "prefix"):
        reporter.problem(
            (*at, "response"), f"step_up applies to an identity, not to target {config.target!r}"
        )
    return config


def _check_honeypot(config: HoneypotConfig, reporter: Reporter, at: JsonPath, routes: Any) -> None:
    for i, pattern in enumerate(config.paths):
        regex = honeypot_pattern(pattern)
        for route in routes:
            try:
                template = parse_template(route.path)
            except TemplateError:
                continue
            if template.is_literal and regex.match(route.path):
                reporter.problem(
                    (*at, "paths", i),
                    f"{pattern!r} matches route {route.name!r}: a honeypot must be a path "
                    "nothing legitimate calls",
                )
