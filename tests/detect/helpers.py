"""Observations and a scorer on a fake clock, for the detection tests."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from authz.detect.events import Action, Observation
from authz.detect.scorer import Scorer
from authz.policy.config import RouteConfig
from authz.policy.detection_config import DetectionConfig, HoneypotConfig
from authz.telemetry.metrics import MemoryMetrics

ROUTES = (
    RouteConfig(name="get-order", path="/v1/orders/{id}", methods=("GET",)),
    RouteConfig(name="login", path="/v1/login", methods=("POST",)),
    RouteConfig(name="list", path="/v1/orders", methods=("GET",)),
)
HONEYPOT = HoneypotConfig(paths=("/.env", "/wp-login.php", "/.git/**"))


class Sink:
    def __init__(self) -> None:
        self.actions: list[Action] = []

    def apply(self, action: Action) -> None:
        self.actions.append(action)


def scorer(config: DetectionConfig | None = None, **changes: Any) -> tuple[Scorer, Sink]:
    sink = Sink()
    s = Scorer(MemoryMetrics(), sink=lambda: sink)
    base = config or DetectionConfig(mode="enforce", warmup=60.0, honeypot=HONEYPOT)
    s.configure(replace(base, **changes) if changes else base, ROUTES)
    return s, sink


def obs(t: float, **kw: Any) -> Observation:
    values: dict[str, Any] = dict(
        time=t,
        decision_id="",
        route="get-order",
        method="GET",
        shape="/v1/orders/{id}",
        path="/v1/orders/1",
        client_address="10.0.0.1",
        identity_kind="jwt",
        subject="alice",
        credential="tok-alice",
        object_ids=(),
        allowed=True,
        status=200,
        reason="allowed",
        body_bytes=0,
    )
    values.update(kw)
    return Observation(**values)


def normal_traffic(
    s: Scorer, start: float, end: float, *, users: int = 60, every: float = 6.0, seed: int = 1
) -> int:
    """``users`` callers, each about one request per ``every`` seconds on its own few
    orders and the list, from its own address; returns how many were fed."""
    rng = random.Random(seed)
    fed = 0
    t = start
    while t < end:
        for u in range(users):
            if rng.random() < 1.0 / every:
                if rng.random() < 0.7:
                    oid = str(1000 * u + rng.randrange(4))
                    path, route, ids = f"/v1/orders/{oid}", "get-order", ()
                else:
                    path, route, ids = "/v1/orders", "list", ()
                s.offer(
                    obs(
                        t + rng.random(),
                        route=route,
                        path=path,
                        object_ids=ids,
                        subject=f"user-{u}",
                        credential=f"tok-{u}",
                        client_address=f"10.{u // 200}.{u % 200}.{1 + u % 3}",
                    )
                )
                fed += 1
        t += 1.0
        s.drain()
    return fed
