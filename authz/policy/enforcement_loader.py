"""The ``enforcement`` section of a policy file -> :mod:`authz.policy.enforcement_config`.

Called by :mod:`authz.policy.loader` after the JSON Schema check (which reports
unknown fields and wrong types); this reports what the schema cannot say, each at
its location through the loader's builder: durations that must be more than zero,
a Redis URL that is not one, duplicate ``acr_values``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from authz.policy.document import JsonPath, parse_duration
from authz.policy.enforcement_config import (
    EnforcementConfig,
    EnforcementRedisConfig,
    StepUpConfig,
    ThrottleConfig,
)
from authz.policy.redis_target import parse_target

SECTION = "enforcement"


class Reporter(Protocol):
    base_dir: Path

    def problem(self, jpath: JsonPath, message: str) -> None: ...

    def where(self, jpath: JsonPath, *, key: bool = False) -> str: ...


class EnforcementBuilder:
    """Builds the ``enforcement`` section of one policy, reporting through ``reporter``."""

    def __init__(self, reporter: Reporter, doc: dict[str, Any]) -> None:
        self.reporter = reporter
        spec = doc.get(SECTION)
        self.present = SECTION in doc
        self.spec: dict[str, Any] = spec if isinstance(spec, dict) else {}

    def config(self) -> EnforcementConfig | None:
        """The section, or None when the policy has none."""
        if not self.present:
            return None
        spec = self.spec
        defaults = EnforcementConfig()
        return EnforcementConfig(
            store=self.store(spec.get("store", "memory")),
            max_entries=int(spec.get("max_entries", defaults.max_entries)),
            step_up=self.step_up(spec.get("step_up")),
            throttle=self.throttle(spec.get("throttle")),
            block_ttl=self.positive(("block_ttl",), defaults.block_ttl),
            revoke_ttl=self.positive(("revoke_ttl",), defaults.revoke_ttl),
            actions=int(spec.get("actions", defaults.actions)),
            public_routes=str(spec.get("public_routes", defaults.public_routes)),
            location=self.reporter.where((SECTION,)),
        )

    def positive(self, path: tuple[str, ...], default: float) -> float:
        """A duration at ``enforcement.<path>`` that must be more than zero."""
        node: Any = self.spec
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return default
        at: JsonPath = (SECTION, *path)
        try:
            value = parse_duration(node)
        except ValueError as exc:
            self.reporter.problem(at, str(exc))
            return default
        if value <= 0:
            self.reporter.problem(at, "must be more than zero")
            return default
        return value

    def store(self, spec: Any) -> EnforcementRedisConfig | None:
        if spec == "memory" or not isinstance(spec, dict):
            return None
        at: JsonPath = (SECTION, "store")
        target = parse_target(self.reporter, at, spec, url_key="redis")
        defaults = EnforcementRedisConfig(url="")
        return EnforcementRedisConfig(
            url=target.url,
            target=target.or_none(),
            on_error=str(spec.get("on_error", defaults.on_error)),
            timeout=self.positive(("store", "timeout"), defaults.timeout),
            key_prefix=str(spec.get("key_prefix", defaults.key_prefix)),
            retry_interval=self.positive(("store", "retry_interval"), defaults.retry_interval),
        )

    def step_up(self, spec: Any) -> StepUpConfig:
        if not isinstance(spec, dict):
            return StepUpConfig()
        values = [str(v) for v in spec.get("acr_values", ())]
        for i, value in enumerate(values):
            if value in values[:i]:
                self.reporter.problem(
                    (SECTION, "step_up", "acr_values", i), f"{value!r} is listed twice"
                )
            if '"' in value or "\\" in value or not value.isprintable():
                self.reporter.problem(
                    (SECTION, "step_up", "acr_values", i),
                    "an acr value goes into a quoted header parameter: no quotes, "
                    "backslashes or control characters",
                )
        return StepUpConfig(
            acr_values=tuple(dict.fromkeys(values)),
            max_age=self.positive(("step_up", "max_age"), StepUpConfig().max_age),
        )

    def throttle(self, spec: Any) -> ThrottleConfig:
        if not isinstance(spec, dict):
            return ThrottleConfig()
        defaults = ThrottleConfig()
        return ThrottleConfig(
            requests=int(spec.get("requests", defaults.requests)),
            per=self.positive(("throttle", "per"), defaults.per),
        )
