"""Statistical detectors vs a learned model (river's HalfSpaceTrees) on one seeded,
in-process scenario: who is caught, how fast, and how many normal callers are hit.

The scenario (simulated time, ``--seed``, fed straight to the background scorer):

- ``--normals`` (default 250) normal identities with a daily mix: each has its own
  rate (log-normal, one request per 5 s to per 2 min), routes (the order list, its
  own few orders, its profile, an occasional login that fails 2% of the time), one
  address (a second one for a tenth of them: mobile), spread over many /24s;
- a legitimate heavy user (a CI pipeline: 5 requests a second from the start);
- a population-wide surge: every normal identity four times as busy, for 3 minutes;
- attackers, each starting after the warm-up: a credential stuffer rotating over a
  /24 (two guesses per address, 5 a second), an ID-enumerating scraper with a valid
  token (3 a second, sequential order ids), a token shared across 40 addresses, and
  a honeypot prober (``/.env`` once, then normal-looking requests).

For each detector set (``statistical``: the five detectors, the defaults of the
policy section; ``learned``: the learned model alone, then both) it prints, per
attacker, the seconds from its first request to its first action (``-``: never),
and the false actions on the normal population, the heavy user and the surge, by
detector.

    python bench/detect_compare.py [--seed 7] [--normals 250] [--minutes 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import importlib.util
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.detect.events import Action, Observation
from authz.detect.features import prefix_of
from authz.detect.scorer import Scorer
from authz.policy.config import RouteConfig
from authz.policy.detection_config import DetectionConfig, HoneypotConfig
from authz.telemetry.metrics import MemoryMetrics
from bench.learned_model import LearnedConfig, install

ROUTES = (
    RouteConfig(name="list-orders", path="/v1/orders", methods=("GET",)),
    RouteConfig(name="get-order", path="/v1/orders/{id}", methods=("GET",)),
    RouteConfig(name="profile", path="/v1/profile", methods=("GET",)),
    RouteConfig(name="login", path="/v1/login", methods=("POST",)),
)
HONEYPOT = HoneypotConfig(paths=("/.env", "/wp-login.php", "/admin/backup.zip", "/.git/**"))
WARMUP = 60.0
ATTACKERS = ("credential_stuffer", "enumerator", "shared_token", "honeypot_prober")


@dataclasses.dataclass
class Event:
    time: float
    who: str  # normal | heavy | an attacker's name
    obs: Observation

    def __lt__(self, other: Event) -> bool:
        return self.time < other.time


def _obs(t: float, n: int, **kw: object) -> Observation:
    values: dict[str, object] = dict(
        time=t, decision_id=f"d{n}", route="list-orders", method="GET", shape="/v1/orders",
        path="/v1/orders", client_address="", identity_kind="jwt", subject="",
        credential="", object_ids=(), allowed=True, status=200, reason="allowed",
        body_bytes=0,
    )  # fmt: skip
    values.update(kw)
    return Observation(**values)  # type: ignore[arg-type]


class Scenario:
    def __init__(self, seed: int, normals: int, minutes: float) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.normals = normals
        self.end = minutes * 60.0
        self.surge = (600.0, 780.0)
        self.starts = {
            "credential_stuffer": 300.0,
            "honeypot_prober": 330.0,
            "enumerator": 400.0,
            "shared_token": 480.0,
        }
        self.n = 0

    def _id(self) -> int:
        self.n += 1
        return self.n

    def events(self) -> Iterator[Event]:
        streams = [self._normal(u) for u in range(self.normals)]
        streams += [
            self._heavy(),
            self._stuffer(),
            self._enumerator(),
            self._shared(),
            self._prober(),
        ]
        return heapq.merge(*streams)

    def _normal(self, u: int) -> Iterator[Event]:
        rng = random.Random(self.rng.random())
        rate = math.exp(rng.uniform(math.log(1 / 120), math.log(1 / 5)))
        addresses = [f"10.{u % 40}.{u // 40}.{1 + u % 200}"]
        if rng.random() < 0.1:
            addresses.append(f"172.16.{u % 50}.{rng.randrange(1, 250)}")
        orders = [str(10_000 * (u + 1) + k) for k in range(rng.randrange(2, 8))]
        t = rng.uniform(0, 30)
        while t < self.end:
            busy = 4.0 if self.surge[0] <= t < self.surge[1] else 1.0
            # a daily mix: busier in the middle of the run, quieter at its ends
            daily = 0.6 + 0.8 * math.sin(math.pi * t / self.end)
            t += rng.expovariate(rate * busy * daily)
            r = rng.random()
            address = rng.choice(addresses)
            common = dict(subject=f"user-{u}", credential=f"jti-{u}", client_address=address)
            if r < 0.45:
                obs = _obs(t, self._id(), **common)
            elif r < 0.85:
                oid = rng.choice(orders)
                obs = _obs(t, self._id(), route="get-order", shape="/v1/orders/{id}",
                           path=f"/v1/orders/{oid}", **common)  # fmt: skip
            elif r < 0.97:
                obs = _obs(t, self._id(), route="profile", shape="/v1/profile",
                           path="/v1/profile", **common)  # fmt: skip
            else:
                failed = rng.random() < 0.2  # a fifth of logins: an expired token
                obs = _obs(
                    t, self._id(), route="login", method="POST", shape="/v1/login",
                    path="/v1/login", client_address=address, body_bytes=200,
                    identity_kind="anonymous" if failed else "jwt",
                    subject="" if failed else f"user-{u}",
                    credential=f"jti-{u}-old" if failed else f"jti-{u}",
                    allowed=not failed, status=401 if failed else 200,
                    reason="token_expired" if failed else "allowed",
                )  # fmt: skip
            yield Event(t, "normal", obs)

    def _heavy(self) -> Iterator[Event]:
        rng = random.Random(self.seed * 10 + 1)
        t = 0.0
        while t < self.end:
            t += rng.expovariate(5.0)
            oid = str(rng.randrange(900, 920))
            yield Event(t, "heavy", _obs(t, self._id(), route="get-order", shape="/v1/orders/{id}",
                        path=f"/v1/orders/{oid}", subject="ci-pipeline", credential="jti-ci",
                        client_address="10.200.0.10"))  # fmt: skip

    def _stuffer(self) -> Iterator[Event]:
        rng = random.Random(self.seed * 10 + 2)
        t = self.starts["credential_stuffer"]
        i = 0
        while t < self.end:
            t += rng.expovariate(5.0)
            yield Event(t, "credential_stuffer", _obs(
                t, self._id(), route="login", method="POST", shape="/v1/login", path="/v1/login",
                client_address=f"203.0.113.{(i // 2) % 254 + 1}", identity_kind="anonymous",
                credential=f"guess-{rng.randrange(10**9)}", allowed=False, status=401,
                reason="token_bad_signature", body_bytes=180))  # fmt: skip
            i += 1

    def _enumerator(self) -> Iterator[Event]:
        rng = random.Random(self.seed * 10 + 3)
        t = self.starts["enumerator"]
        n = 100_000
        while t < self.end:
            t += rng.expovariate(3.0)
            n += 1
            yield Event(t, "enumerator", _obs(
                t, self._id(), route="get-order", shape="/v1/orders/{id}", path=f"/v1/orders/{n}",
                subject="scraper", credential="jti-scraper", client_address="198.51.100.23",
                status=404 if rng.random() < 0.5 else 200))  # fmt: skip

    def _shared(self) -> Iterator[Event]:
        rng = random.Random(self.seed * 10 + 4)
        t = self.starts["shared_token"]
        while t < self.end:
            t += rng.expovariate(2.0)  # 40 addresses, one request each every ~20 s
            yield Event(t, "shared_token", _obs(
                t, self._id(), subject="leaked-user", credential="jti-leaked",
                client_address=f"100.64.{rng.randrange(40)}.7"))  # fmt: skip

    def _prober(self) -> Iterator[Event]:
        rng = random.Random(self.seed * 10 + 5)
        t = self.starts["honeypot_prober"]
        yield Event(t, "honeypot_prober", _obs(
            t, self._id(), route="", shape="", path="/.env", client_address="192.0.2.66",
            identity_kind="anonymous", allowed=False, status=404,
            reason="undeclared_route"))  # fmt: skip
        while t < self.end:
            t += rng.expovariate(0.2)
            yield Event(t, "honeypot_prober", _obs(
                t, self._id(), client_address="192.0.2.66", identity_kind="anonymous",
                route="list-orders", allowed=False, status=401,
                reason="missing_credential"))  # fmt: skip


class Sink:
    def __init__(self) -> None:
        self.actions: list[Action] = []

    def apply(self, action: Action) -> None:
        self.actions.append(action)


def whose(action: Action) -> str:
    """Who an action hit: an attacker's name, heavy, or normal."""
    kind, target = action.target_kind, action.target
    if (kind == "prefix" and target == "203.0.113.0/24") or target.startswith("203.0.113."):
        return "credential_stuffer"
    if target in ("scraper", "jti-scraper", "198.51.100.23"):
        return "enumerator"
    if target in ("leaked-user", "jti-leaked") or target.startswith("100.64."):
        return "shared_token"
    if target == "192.0.2.66":
        return "honeypot_prober"
    if target in ("ci-pipeline", "jti-ci", "10.200.0.10") or target == prefix_of("10.200.0.10"):
        return "heavy"
    return "normal"


def run(
    config: DetectionConfig, scenario: Scenario, learned: LearnedConfig | None = None
) -> tuple[list[Action], float, int]:
    sink = Sink()
    scorer = Scorer(MemoryMetrics(), sink=lambda: sink)
    scorer.configure(config, ROUTES)
    if learned is not None:
        install(scorer, learned)
    started = time.process_time()
    next_drain = 0.0
    fed = 0
    for event in scenario.events():
        if event.time >= next_drain:
            scorer.drain()
            next_drain = event.time + 0.2
        scorer.offer(event.obs)
        fed += 1
    scorer.drain()
    return sink.actions, time.process_time() - started, fed


def report(name: str, actions: list[Action], scenario: Scenario, cpu: float, fed: int) -> None:
    first: dict[str, float] = {}
    false: Counter[tuple[str, str]] = Counter()
    for a in actions:
        who = whose(a)
        if who in ATTACKERS:
            first.setdefault(who, a.time - scenario.starts[who])
        else:
            surge = scenario.surge[0] <= a.time < scenario.surge[1]
            false[(who if who == "heavy" else ("surge" if surge else "normal"), a.detector)] += 1
    print(
        f"\n== {name}: {len(actions)} actions, {fed:,} requests, "
        f"scoring {cpu / fed * 1e6:.1f} µs each"
    )
    print(f"{'attacker':22} {'s to first action':>18}  first detector")
    for who in ATTACKERS:
        detector = next((a.detector for a in actions if whose(a) == who), "")
        seconds = f"{first[who]:.1f}" if who in first else "-"
        print(f"{who:22} {seconds:>18}  {detector}")
    total = sum(false.values())
    print(f"false actions: {total} (normal identities: {scenario.normals})")
    for (group, detector), count in sorted(false.items()):
        rate = count / scenario.normals if group != "heavy" else float(count)
        print(f"  {group:8} {detector:20} {count:4}  ({rate:.3f} per identity)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--normals", type=int, default=250)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--learned-threshold", type=float, default=LearnedConfig().threshold)
    parser.add_argument("--learned-samples", type=int, default=LearnedConfig().min_samples)
    args = parser.parse_args()
    logging.getLogger("authz.detect").setLevel(logging.ERROR)  # actions: counted here
    with open("/proc/loadavg") as f:
        print("loadavg", " ".join(f.read().split()[:3]), f"seed {args.seed}")
    base = DetectionConfig(mode="enforce", warmup=WARMUP, honeypot=HONEYPOT)
    statistical = base
    learned_cfg = LearnedConfig(threshold=args.learned_threshold, min_samples=args.learned_samples)
    off = {"enabled": False}
    learned_only = dataclasses.replace(
        base,
        **{
            name: dataclasses.replace(getattr(base, name), **off)
            for name in (
                "honeypot",
                "credential_stuffing",
                "enumeration",
                "token_sharing",
                "data_volume",
            )
        },
    )
    runs: list[tuple[str, DetectionConfig, LearnedConfig | None]] = [
        ("statistical", statistical, None)
    ]
    if importlib.util.find_spec("river") is not None:
        runs += [
            ("learned only", learned_only, learned_cfg),
            ("statistical + learned", statistical, learned_cfg),
        ]
    else:
        print("(river is not installed: pip install 'authz[detect]' for the learned model)")
    for name, config, learned in runs:
        scenario = Scenario(args.seed, args.normals, args.minutes)
        actions, cpu, fed = run(config, scenario, learned)
        report(name, actions, scenario, cpu, fed)


if __name__ == "__main__":
    main()
