"""Who sends what, and when: the scenario's clients and their seeded schedules.

Everything here is a pure function of :class:`ScenarioConfig` (its ``seed``
included) and the signing keys: the same config gives the same clients, the same
source addresses and the same requests at the same offsets (the bytes of a
signature differ, ES256 being randomised; what is signed does not).

Clients (each with its own 127.x.y.z source addresses, which Linux routes to
loopback, so Envoy sees that many client addresses):

- ``normal-NNNN``: the population. Most are shoppers with a JWT, some are
  integrations with an API key. Each has its own rate (log-normal around
  ``normal_rate``), a route mix, and a few object ids of its own. The whole
  population follows a compressed day (quiet, busy, quiet); ``surge_share`` of it
  doubles or triples its rate during the surge (a product launch).
- ``heavy-ci``: a CI pipeline with an API key, at ``heavy_rate`` from the first
  second (its usual heavy rate: a baseline, not an anomaly).
- attackers, from ``attack_start`` on (``attack_stagger`` apart):
  ``stuffer`` (bad JWTs of many subjects and unknown API keys, rotating over a
  /24), ``enumerator`` (a valid JWT walking ``/v1/orders/{id}`` sequentially),
  ``sharer`` (one valid JWT from ``sharer_addresses`` addresses) and ``prober``
  (``/.env``, ``/wp-login.php``, then a shopper's behaviour).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from authz import devissuer

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


# ----------------------------------------------------------------------------- addresses


#: the first OFFICE normal identities work behind one office network (one /24)
OFFICE = 40


def normal_address(i: int) -> str:
    """An office /24 of ``OFFICE`` identities, then eight per /24 (home ISPs)."""
    if i < OFFICE:
        return f"127.10.0.{10 + i}"
    j = i - OFFICE
    return f"127.10.{1 + j // 8}.{10 + j % 8}"


def mobile_address(k: int) -> str:
    """A mobile carrier's CGNAT range: the k-th phone's address."""
    return f"127.30.{k // 200}.{10 + k % 200}"


HEAVY_ADDRESS = "127.20.0.2"
ENUMERATOR_ADDRESS = "127.77.0.5"
PROBER_ADDRESS = "127.88.0.9"


def stuffer_addresses(n: int) -> tuple[str, ...]:
    """One /24 (a rented range), ``n`` addresses of it, rotated."""
    return tuple(f"127.66.6.{10 + k}" for k in range(min(n, 240)))


def sharer_addresses(n: int) -> tuple[str, ...]:
    """A leaked token used from ``n`` unrelated networks (one /24 each)."""
    return tuple(f"127.50.{k}.7" for k in range(n))


# ----------------------------------------------------------------------------- credentials


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def credential_names(token_or_key: str, jti: str = "") -> frozenset[str]:
    """Every name an action could give this credential: jti, digests of the token or key."""
    names = {key_digest(token_or_key), devissuer_digest(token_or_key)}
    if token_or_key.count(".") == 2:
        head_payload = token_or_key.rsplit(".", 1)[0]
        names |= {key_digest(head_payload), devissuer_digest(head_payload)}
    if jti:
        names.add(jti)
    return frozenset(names)


def devissuer_digest(text: str) -> str:
    """:func:`authz.detect.events.credential_digest` (16 hex digits of SHA-256)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jti(token: str) -> str:
    import base64

    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims.get("jti", ""))


# ----------------------------------------------------------------------------- timing


def _arrivals(
    rng: random.Random, start: float, end: float, rate: Callable[[float], float], peak: float
) -> Iterator[float]:
    """A Poisson process of intensity ``rate(t) <= peak`` on [start, end) (thinning)."""
    if peak <= 0:
        return
    t = start
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return
        if rng.random() * peak < rate(t):
            yield t


def day(t: float, duration: float) -> float:
    """The compressed day: 0.6 of the mean at dawn and dusk, 1.3 at midday."""
    return 0.6 + 0.7 * math.sin(math.pi * min(max(t / duration, 0.0), 1.0))


def _steady(rng: random.Random, start: float, end: float, rate: float) -> Iterator[float]:
    """A steady client (a pipeline, a script): ``rate`` per second with a little jitter."""
    if rate <= 0:
        return
    t = start + rng.random() / rate
    while t < end:
        yield t
        t += (0.8 + 0.4 * rng.random()) / rate


def _normal_rate(
    rate: float, duration: float, surge: Callable[[float], float]
) -> Callable[[float], float]:
    def at(t: float) -> float:
        return rate * day(t, duration) * surge(t)

    return at


# ----------------------------------------------------------------------------- route mixes


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _key(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


def _order_body(rng: random.Random) -> bytes:
    items = [{"sku": f"SKU-{rng.randrange(1000, 1200)}", "qty": rng.randint(1, 3)}]
    return json.dumps({"items": items}).encode()


def _sku(rng: random.Random, wide: bool) -> str:
    """A product: most shoppers look at the popular ones, a browser at anything."""
    if wide:
        return f"SKU-{rng.randrange(1000, 1400)}"
    return f"SKU-{int(rng.paretovariate(1.2) * 1000) % 400 + 1000}"


def shopper_request(
    rng: random.Random,
    auth: tuple[tuple[str, str], ...],
    orders: list[int],
    *,
    wide: bool = False,
    launch: bool = False,
) -> Request:
    """A shopper's day: browse products, look at their own orders, now and then buy.
    ``wide``: a browser who looks at many products; ``launch``: the surge's new product."""
    r = rng.random()
    if launch and r < 0.5:
        if r < 0.35:
            return Request("GET", "/v1/products/LAUNCH-1", auth)
        return Request("POST", "/v1/orders", auth, _order_body(rng))
    if r < 0.30:
        return Request("GET", f"/v1/products?page={rng.randint(1, 5)}", auth)
    if r < (0.70 if wide else 0.55):
        return Request("GET", f"/v1/products/{_sku(rng, wide)}", auth)
    if r < 0.68:
        return Request("GET", "/v1/orders", auth)
    if r < 0.84:
        return Request("GET", f"/v1/orders/{rng.choice(orders)}", auth)
    if r < 0.92:
        return Request("GET", "/v1/me", auth)
    return Request("POST", "/v1/orders", auth, _order_body(rng))


def integration_request(
    rng: random.Random,
    auth: tuple[tuple[str, str], ...],
    orders: list[int],
    *,
    wide: bool = False,
    launch: bool = False,
) -> Request:
    """A partner's integration: order status sync and reports."""
    r = rng.random()
    if r < 0.35:
        return Request("GET", f"/v1/orders?status={rng.choice(('open', 'shipped'))}", auth)
    if r < 0.80:
        return Request("GET", f"/v1/orders/{rng.choice(orders)}", auth)
    if r < 0.90:
        return Request("GET", "/v1/reports", auth)
    return Request("GET", f"/v1/products?page={rng.randint(1, 20)}", auth)


def ci_request(rng: random.Random, auth: tuple[tuple[str, str], ...], orders: list[int]) -> Request:
    """The CI pipeline's smoke suite, over and over: create, read back, list, catalogue."""
    r = rng.random()
    if r < 0.25:
        return Request("POST", "/v1/orders", auth, _order_body(rng))
    if r < 0.55:
        return Request("GET", f"/v1/orders/{rng.choice(orders)}", auth)
    if r < 0.75:
        return Request("GET", "/v1/orders", auth)
    if r < 0.95:
        return Request("GET", f"/v1/products?page={rng.randint(1, 3)}", auth)
    return Request("GET", "/v1/reports", auth)


def _own_orders(rng: random.Random, i: int, n: int) -> list[int]:
    base = 100_000 + i * 97
    return sorted(rng.sample(range(base, base + 90), n))


# ----------------------------------------------------------------------------- the population


def build(
    config: ScenarioConfig,
    key: devissuer.DevKey,
    issuer: str,
    *,
    attacker_key: devissuer.DevKey | None = None,
) -> Population:
    """Every client and every request of the scenario, from ``config.seed``."""
    rng = random.Random(config.seed)
    attacker_key = attacker_key or devissuer.generate_key("ES256")
    end = config.duration
    clients: list[Client] = []
    api_keys: list[tuple[str, str, str]] = []

    def mint(subject: str, ttl: float = 3600, now: float | None = None) -> str:
        return devissuer.mint(
            key, issuer=issuer, subject=subject, audience=AUDIENCE, scopes=SCOPES, ttl=ttl,
            now=now,
        )  # fmt: skip

    def surge_of(factor: float) -> Callable[[float], float]:
        s0, s1 = config.surge_start, config.surge_start + config.surge_length

        def at(t: float) -> float:
            return factor if s0 <= t < s1 else 1.0

        return at

    # -- the normal population
    n_keys = round(config.normals * config.api_key_share)
    key_users = set(rng.sample(range(config.normals), n_keys)) if n_keys else set()
    surgers = set(rng.sample(range(config.normals), round(config.normals * config.surge_share)))
    s0, s1 = config.surge_start, config.surge_start + config.surge_length
    phones = 0
    for i in range(config.normals):
        crng = random.Random(f"{config.seed}:normal:{i}")
        name = f"normal-{i:04d}"
        rate = config.normal_rate * math.exp(crng.gauss(0, 0.5) - 0.125)  # mean normal_rate
        factor = crng.choice((2.0, 3.0)) if i in surgers and config.surge_length > 0 else 1.0
        addresses: tuple[str, ...] = (normal_address(i),)
        wide = False
        if i in key_users:
            subject = f"partner-{i:04d}"
            secret = f"sk-{name}-{crng.getrandbits(64):016x}"
            api_keys.append((subject, key_digest(secret), name))
            auth, creds = _key(secret), credential_names(secret)
            stale = _key(f"sk-{name}-retired-{crng.getrandbits(32):08x}")  # a rotated-out key
            make, orders = integration_request, _own_orders(crng, i, 12)
        else:
            subject = f"user-{i:04d}"
            token = mint(subject)
            auth, creds = _bearer(token), credential_names(token, _jti(token))
            stale = _bearer(mint(subject, ttl=600, now=time.time() - 3600))  # expired
            make, orders = shopper_request, _own_orders(crng, i, 4)
            if crng.random() < config.mobile_share:  # home and phone
                addresses = (*addresses, mobile_address(phones))
                phones += 1
            wide = crng.random() < config.browser_share
        client = Client(name, "normal", addresses, subject, creds | {subject}, factor)
        for t in _arrivals(
            crng, 0.0, end, _normal_rate(rate, end, surge_of(factor)), rate * 1.3 * factor
        ):
            source = addresses[0] if len(addresses) == 1 or crng.random() < 0.6 else addresses[1]
            if crng.random() < config.stale_share:  # a refresh race, a retired key
                request = Request("GET", "/v1/orders", stale, tag="stale")
            else:
                launch = factor > 1.0 and s0 <= t < s1
                request = make(crng, auth, orders, wide=wide, launch=launch)
            client.events.append(Event(t, source, request))
        clients.append(client)

    # -- the legitimate heavy user
    crng = random.Random(f"{config.seed}:heavy")
    ci_secret = f"sk-ci-{crng.getrandbits(64):016x}"
    api_keys.append(("ci-pipeline", key_digest(ci_secret), "heavy-ci"))
    heavy = Client(
        "heavy-ci",
        "heavy",
        (HEAVY_ADDRESS,),
        "ci-pipeline",
        credential_names(ci_secret) | {"ci-pipeline"},
    )
    ci_orders = _own_orders(crng, 5000, 20)
    for t in _steady(crng, 0.0, end, config.heavy_rate):
        heavy.events.append(Event(t, HEAVY_ADDRESS, ci_request(crng, _key(ci_secret), ci_orders)))
    clients.append(heavy)

    starts = {
        name: config.attack_start + k * config.attack_stagger for k, name in enumerate(ATTACKERS)
    }

    # -- the credential stuffer: bad JWTs of many subjects, unknown API keys, a rotating /24
    crng = random.Random(f"{config.seed}:stuffer")
    addrs = stuffer_addresses(config.stuffer_addresses)
    stuffer = Client("stuffer", "stuffer", addrs)
    for k, t in enumerate(_steady(crng, starts["stuffer"], end, config.stuffer_rate)):
        path = "/v1/orders"
        if crng.random() < 0.5:
            path = "/v1/orders" if crng.random() < 0.7 else "/v1/me"
            subject = f"user-{crng.randrange(10_000, 99_999)}"
            forged = devissuer.mint(
                attacker_key, issuer=issuer, subject=subject, audience=AUDIENCE, scopes=SCOPES,
                headers={"kid": key.kid},
            )  # fmt: skip
            auth = _bearer(forged)
        else:
            auth = _key(f"sk-{crng.getrandbits(64):016x}")
        stuffer.events.append(Event(t, addrs[k % len(addrs)], Request("GET", path, auth)))
    clients.append(stuffer)

    # -- the enumerator: a valid token walking order ids one by one
    crng = random.Random(f"{config.seed}:enumerator")
    token = mint("user-scraper")
    enumerator = Client(
        "enumerator", "enumerator", (ENUMERATOR_ADDRESS,), "user-scraper",
        credential_names(token, _jti(token)) | {"user-scraper"},
    )  # fmt: skip
    first_id = 100_000 + crng.randrange(0, 5000)
    for k, t in enumerate(_steady(crng, starts["enumerator"], end, config.enumerator_rate)):
        enumerator.events.append(
            Event(
                t, ENUMERATOR_ADDRESS, Request("GET", f"/v1/orders/{first_id + k}", _bearer(token))
            )
        )
    clients.append(enumerator)

    # -- the shared token: one subject's token from many networks, each behaving like a shopper
    crng = random.Random(f"{config.seed}:sharer")
    token = mint("user-shared")
    s_addrs = sharer_addresses(config.sharer_addresses)
    sharer = Client(
        "sharer",
        "sharer",
        s_addrs,
        "user-shared",
        credential_names(token, _jti(token)) | {"user-shared"},
    )
    orders = _own_orders(crng, 7000, 6)
    events: list[Event] = []
    for a, addr in enumerate(s_addrs):
        begin = starts["sharer"] + a * min(0.25, 10.0 / max(len(s_addrs), 1))
        events.append(Event(begin, addr, shopper_request(crng, _bearer(token), orders)))
        for t in _arrivals(crng, begin, end, lambda t: config.sharer_rate, config.sharer_rate):
            events.append(Event(t, addr, shopper_request(crng, _bearer(token), orders)))
    sharer.events = sorted(events, key=lambda e: e.at)
    clients.append(sharer)

    # -- the honeypot prober: decoys first, then a shopper
    crng = random.Random(f"{config.seed}:prober")
    token = mint("user-prober")
    prober = Client(
        "prober",
        "prober",
        (PROBER_ADDRESS,),
        "user-prober",
        credential_names(token, _jti(token)) | {"user-prober"},
    )
    t0 = starts["prober"]
    for k, probe in enumerate(PROBES):
        prober.events.append(Event(t0 + 0.3 * k, PROBER_ADDRESS, Request("GET", probe)))
    orders = _own_orders(crng, 8000, 4)
    for t in _arrivals(crng, t0 + 1.0, end, lambda t: config.prober_rate, config.prober_rate):
        prober.events.append(
            Event(t, PROBER_ADDRESS, shopper_request(crng, _bearer(token), orders))
        )
    clients.append(prober)
    return Population(config, clients, api_keys)
