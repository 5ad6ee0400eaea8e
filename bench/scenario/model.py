"""The scenario's vocabulary: its config, clients, requests and the population.

:class:`ScenarioConfig` holds every knob (the seed first); :data:`SMOKE` is the
short version the end-to-end test runs. A :class:`Client` is one actor with its
own source addresses and what an action may name it by; its :class:`Event` list is
its schedule.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

AUDIENCE = "shop"
SCOPES = "catalog:read orders:read orders:write"
HOST = "shop.local"
#: honeypot paths the prober tries (the scenario policy declares them as decoys)
PROBES = ("/.env", "/wp-login.php")
ATTACKERS = ("stuffer", "enumerator", "sharer", "prober")


@dataclass(frozen=True)
class ScenarioConfig:
    seed: int = 10
    normals: int = 200
    #: share of the normal population that uses an API key instead of a JWT
    api_key_share: float = 0.1
    #: seconds of traffic in all
    duration: float = 180.0
    #: attackers start after this warm-up (normals and the heavy user run from 0)
    attack_start: float = 40.0
    attack_stagger: float = 5.0
    surge_start: float = 110.0
    surge_length: float = 60.0
    surge_share: float = 0.7
    #: mean requests/s of one normal identity (each has its own, log-normal)
    normal_rate: float = 0.25
    heavy_rate: float = 8.0
    stuffer_rate: float = 8.0
    stuffer_addresses: int = 200
    enumerator_rate: float = 4.0
    sharer_addresses: int = 40
    #: requests/s from each of the sharer's addresses
    sharer_rate: float = 0.25
    prober_rate: float = 0.5
    #: share of JWT users who send from two addresses (home and a phone on a carrier NAT)
    mobile_share: float = 0.15
    #: share of JWT users who browse many distinct products
    browser_share: float = 0.05
    #: share of a normal identity's requests that fail authentication (expired token,
    #: retired key): legitimate failures, spread over the population
    stale_share: float = 0.02

    def with_(self, **changes: object) -> ScenarioConfig:
        from dataclasses import replace

        return replace(self, **changes)  # type: ignore[arg-type]


#: A short scenario for the end-to-end smoke test: few identities, no surge.
SMOKE = ScenarioConfig(
    normals=12,
    duration=24.0,
    attack_start=4.0,
    attack_stagger=1.0,
    surge_start=0.0,
    surge_length=0.0,
    normal_rate=0.5,
    heavy_rate=3.0,
    stuffer_rate=6.0,
    stuffer_addresses=60,
    enumerator_rate=4.0,
    sharer_addresses=12,
    sharer_rate=0.5,
    prober_rate=1.0,
)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: "stale": a legitimate client's request that is meant to fail (an expired token)
    tag: str = ""

    def encode(self, host: str = HOST) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"host: {host}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            lines += ["content-type: application/json", f"content-length: {len(self.body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True, slots=True)
class Event:
    """One request of a client, due ``at`` seconds after the run starts, from ``source``."""

    at: float
    source: str
    request: Request


@dataclass
class Client:
    name: str
    #: normal | heavy | stuffer | enumerator | sharer | prober
    kind: str
    addresses: tuple[str, ...]
    #: the verified subject ("" for the stuffer, whose credentials are all bad)
    subject: str = ""
    #: what an action may name it by: subject, token jti and digests, API key digests
    credentials: frozenset[str] = frozenset()
    #: surge factor (1.0: does not take part)
    surge: float = 1.0
    events: list[Event] = field(default_factory=list)
    #: a normal identity's network: office (a /24 of its own addresses), nat (one
    #: address shared with others), home; "+phone" when it also sends from a phone
    group: str = ""

    @property
    def start(self) -> float:
        return self.events[0].at if self.events else 0.0


@dataclass
class Population:
    config: ScenarioConfig
    clients: list[Client]
    #: API keys the policy declares: (id, sha256 hex digest, owner)
    api_keys: list[tuple[str, str, str]]

    def by_kind(self, kind: str) -> list[Client]:
        return [c for c in self.clients if c.kind == kind]

    def client(self, name: str) -> Client:
        return next(c for c in self.clients if c.name == name)

    def events(self) -> int:
        return sum(len(c.events) for c in self.clients)

    def fingerprint(self) -> str:
        """A digest of every (client, offset, source, method, path): equal for equal seeds."""
        h = hashlib.sha256()
        for c in self.clients:
            for e in c.events:
                h.update(
                    f"{c.name} {e.at:.6f} {e.source} {e.request.method} {e.request.path}\n".encode()
                )
        return h.hexdigest()[:16]
