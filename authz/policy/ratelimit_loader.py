"""The ``rate_limits`` sections of a policy file -> :mod:`authz.policy.ratelimit_config`.

Called by :mod:`authz.policy.loader` after the JSON Schema check; reports
semantic problems (unknown stores, duplicate rule names, a batch on the
in-process store, ...) at their location through the loader's builder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from authz.policy.document import JsonPath, parse_duration
from authz.policy.ratelimit_config import (
    MEMORY_STORE,
    PRIORITIES,
    AdaptiveConfig,
    OverloadConfig,
    RateLimitConfig,
    RedisStoreConfig,
    RuleConfig,
)
from authz.policy.redis_target import parse_target
from authz.units import UNITS

_RATE = re.compile(r"^([1-9][0-9]*)/([0-9]+(?:\.[0-9]+)?)?(ms|s|m|h|d)$")
DEFAULT_LEASE = 30.0
DEFAULT_SYNC_INTERVAL = 0.1
DEFAULT_RETRY_AFTER = 5.0


class Reporter(Protocol):
    base_dir: Path  # relative paths in the policy are relative to its directory

    def problem(self, jpath: JsonPath, message: str) -> None: ...

    def where(self, jpath: JsonPath, *, key: bool = False) -> str: ...


def parse_rate(text: str) -> tuple[int, float]:
    """``20/s`` -> (20, 1.0); ``100/10s`` -> (100, 10.0). Raises ValueError."""
    m = _RATE.match(text)
    if m is None:
        raise ValueError(f"invalid rate {text!r}: write N/unit, e.g. 20/s, 5000/h, 100/10s")
    count = float(m.group(2)) if m.group(2) else 1.0
    period = count * UNITS[m.group(3)]
    if period <= 0:
        raise ValueError(f"invalid rate {text!r}: the period must be more than zero")
    return int(m.group(1)), period


class RateLimitBuilder:
    """Builds the rate-limit parts of one policy, reporting problems through ``reporter``."""

    def __init__(self, reporter: Reporter, doc: dict[str, Any]) -> None:
        self.reporter = reporter
        spec = doc.get("rate_limits")
        self.spec: dict[str, Any] = spec if isinstance(spec, dict) else {}
        self.rule_names: dict[str, JsonPath] = {}
        self.stores: tuple[RedisStoreConfig, ...] = ()
        self.global_rules: tuple[RuleConfig, ...] = ()

    def load(self) -> None:
        """Read the stores and the global rules (before the routes' rules, so that
        a duplicate name is reported where it appears second)."""
        self.stores = self._stores()
        self.global_rules = self.rules(self.spec.get("rules"), ("rate_limits", "rules"), route=None)

    def _stores(self) -> tuple[RedisStoreConfig, ...]:
        specs = self.spec.get("stores")
        stores = []
        for name, spec in specs.items() if isinstance(specs, dict) else ():
            at: JsonPath = ("rate_limits", "stores", name)
            if name == MEMORY_STORE:
                self.reporter.problem(at, f"{MEMORY_STORE!r} is the in-process store's name")
                continue
            defaults = RedisStoreConfig(name=name, url="")
            timeout = parse_duration(spec.get("timeout", defaults.timeout))
            if timeout <= 0:
                self.reporter.problem((*at, "timeout"), "must be more than zero")
            target = parse_target(self.reporter, at, spec)
            stores.append(
                RedisStoreConfig(
                    name=name,
                    url=target.url,
                    target=target.or_none(),
                    timeout=timeout,
                    pool_size=int(spec.get("pool_size", defaults.pool_size)),
                    key_prefix=str(spec.get("key_prefix", defaults.key_prefix)),
                    retry_interval=parse_duration(
                        spec.get("retry_interval", defaults.retry_interval)
                    ),
                )
            )
        return tuple(stores)

    def config(self) -> RateLimitConfig:
        spec = self.spec
        defaults = RateLimitConfig()
        return RateLimitConfig(
            stores=self.stores,
            max_keys=int(spec.get("max_keys", defaults.max_keys)),
            trusted_hops=int(spec.get("trusted_hops", defaults.trusted_hops)),
            ipv6_prefix=int(spec.get("ipv6_prefix", defaults.ipv6_prefix)),
            response_headers=bool(spec.get("response_headers", defaults.response_headers)),
            rules=self.global_rules,
            overload=self.overload(spec.get("overload")),
        )

    def overload(self, spec: Any) -> OverloadConfig:
        if not isinstance(spec, dict):
            return OverloadConfig()
        at: JsonPath = ("rate_limits", "overload")
        background, normal = spec.get("background_at"), spec.get("normal_at")
        if background is not None and normal is not None and normal < background:
            self.reporter.problem(
                (*at, "normal_at"), "normal routes cannot be shed before background ones"
            )
        retry_after = parse_duration(spec.get("retry_after", DEFAULT_RETRY_AFTER))
        signal_file = spec.get("signal_file")
        if signal_file is not None:
            signal_file = str((self.reporter.base_dir / signal_file).resolve())
        return OverloadConfig(
            background_at=background,
            normal_at=normal,
            signal_file=signal_file,
            retry_after=retry_after,
            adaptive=self.adaptive(spec.get("adaptive"), (*at, "adaptive")),
        )

    def adaptive(self, spec: Any, at: JsonPath) -> AdaptiveConfig | None:
        """``overload.adaptive``: its settings (``{}``: the defaults); absent: off."""
        if not isinstance(spec, dict):
            return None
        d = AdaptiveConfig()
        report = self.reporter.problem
        durations = {}
        for name in ("interval", "baseline", "stale_after"):
            durations[name] = parse_duration(spec.get(name, getattr(d, name)))
        interval = durations["interval"]
        if interval < 0.05:
            report((*at, "interval"), "must be at least 50ms (the limit is recomputed each)")
            interval = d.interval
        for name in ("baseline", "stale_after"):
            if durations[name] < interval:
                report((*at, name), f"must be at least the interval ({interval:g}s)")
        numbers = {
            name: float(spec.get(name, getattr(d, name))) for name in ("min_limit", "max_limit")
        }
        low, high = numbers["min_limit"], numbers["max_limit"]
        # Not given: the default, within the bounds given.
        numbers["initial_limit"] = float(
            spec.get("initial_limit", min(max(d.initial_limit, low), high))
        )
        if high < low:
            report((*at, "max_limit"), f"is below min_limit ({low:g})")
        elif not low <= numbers["initial_limit"] <= high:
            report(
                (*at, "initial_limit"),
                f"{numbers['initial_limit']:g} is outside [min_limit {low:g}, max_limit {high:g}]",
            )
        return AdaptiveConfig(
            interval=interval,
            tolerance=float(spec.get("tolerance", d.tolerance)),
            baseline=durations["baseline"],
            smoothing=float(spec.get("smoothing", d.smoothing)),
            min_limit=numbers["min_limit"],
            max_limit=numbers["max_limit"],
            initial_limit=numbers["initial_limit"],
            headroom=float(spec.get("headroom", d.headroom)),
            error_rate=float(spec.get("error_rate", d.error_rate)),
            backoff=float(spec.get("backoff", d.backoff)),
            min_samples=int(spec.get("min_samples", d.min_samples)),
            normal_above=float(spec.get("normal_above", d.normal_above)),
            stale_after=durations["stale_after"],
            max_routes=int(spec.get("max_routes", d.max_routes)),
        )

    def priority(self, spec: dict[str, Any]) -> str:
        value = spec.get("priority", "normal")
        return value if value in PRIORITIES else "normal"

    def rules(self, specs: Any, at: JsonPath, *, route: str | None) -> tuple[RuleConfig, ...]:
        rules = []
        for i, spec in enumerate(specs if isinstance(specs, list) else ()):
            rule = self.rule(spec, (*at, i), route)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def rule(self, spec: dict[str, Any], at: JsonPath, route: str | None) -> RuleConfig | None:
        report = self.reporter.problem
        name = spec["name"]
        if name in self.rule_names:
            report((*at, "name"), f"duplicate rate limit name {name!r}")
        self.rule_names.setdefault(name, at)
        store = spec.get("store", MEMORY_STORE)
        redis = self.stores_by_name().get(store)
        if store != MEMORY_STORE and redis is None:
            known = ", ".join([MEMORY_STORE, *self.stores_by_name()])
            report((*at, "store"), f"no store named {store!r} (known: {known})")
        key = tuple(
            part if not part.startswith("header:") else part.lower() for part in spec.get("key", ())
        )
        common: dict[str, Any] = dict(
            name=name,
            key=key,
            store=store,
            on_store_error=spec.get("on_store_error", "deny"),
            shadow=bool(spec.get("shadow", False)),
            route=route,
            location=self.reporter.where(at),
        )
        has_rate, has_cap = "rate" in spec, "concurrency" in spec
        if has_rate == has_cap:
            report(at, "give either rate (with an optional burst) or concurrency (with a lease)")
            return None
        if has_cap:
            for extra in ("burst", "batch", "sync_interval"):
                if extra in spec:
                    report((*at, extra), f"{extra} is for rate rules, not concurrency caps")
            lease = parse_duration(spec.get("lease", DEFAULT_LEASE))
            if lease <= 0:
                report((*at, "lease"), "must be more than zero")
                lease = DEFAULT_LEASE
            return RuleConfig(burst=int(spec["concurrency"]), lease=lease, **common)
        if "lease" in spec:
            report((*at, "lease"), "lease is for concurrency caps, not rate rules")
        try:
            limit, period = parse_rate(spec["rate"])
        except ValueError as exc:
            report((*at, "rate"), str(exc))
            return None
        burst = int(spec.get("burst", limit))
        batch = int(spec.get("batch", 0))
        sync_interval = DEFAULT_SYNC_INTERVAL
        if batch:
            if redis is None:
                report((*at, "batch"), "batched counting needs a redis store")
            if batch > burst:
                report((*at, "batch"), f"a batch larger than the burst ({burst}) is never used")
            sync_interval = parse_duration(spec.get("sync_interval", sync_interval))
            if sync_interval <= 0:
                report((*at, "sync_interval"), "must be more than zero")
        elif "sync_interval" in spec:
            report((*at, "sync_interval"), "sync_interval is for batched rules (batch: N)")
        return RuleConfig(
            limit=limit,
            period=period,
            burst=burst,
            batch=batch,
            sync_interval=sync_interval,
            **common,
        )

    def stores_by_name(self) -> dict[str, RedisStoreConfig]:
        return {s.name: s for s in self.stores}

    def route_limits(
        self, i: int, spec: dict[str, Any], name: str, public: bool
    ) -> tuple[str, tuple[RuleConfig, ...]]:
        at: JsonPath = ("routes", i)
        rules = self.rules(spec.get("rate_limits"), (*at, "rate_limits"), route=name)
        priority = self.priority(spec)
        if public and "priority" in spec and not rules:
            self.reporter.problem(
                (*at, "priority"),
                "a public route is not checked by authz (Envoy skips ext_authz there) "
                "unless it has rate_limits; a priority alone has no effect",
            )
        return priority, rules
