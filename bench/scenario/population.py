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

import math
import random
import time
from collections.abc import Callable

from authz import devissuer
from bench.scenario.model import (
    ATTACKERS,
    AUDIENCE,
    PROBES,
    SCOPES,
    Client,
    Event,
    Population,
    Request,
    ScenarioConfig,
)
from bench.scenario.traffic import (
    ENUMERATOR_ADDRESS,
    HEAVY_ADDRESS,
    PROBER_ADDRESS,
    arrivals,
    bearer,
    ci_request,
    credential_names,
    group_of,
    integration_request,
    jti_of,
    key_digest,
    key_header,
    mobile_address,
    normal_address,
    normal_rate_of,
    own_orders,
    sharer_addresses,
    shopper_request,
    steady,
    stuffer_addresses,
)

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
            auth, creds = key_header(secret), credential_names(secret)
            stale = key_header(f"sk-{name}-retired-{crng.getrandbits(32):08x}")  # a rotated-out key
            make, orders = integration_request, own_orders(crng, i, 12)
        else:
            subject = f"user-{i:04d}"
            token = mint(subject)
            auth, creds = bearer(token), credential_names(token, jti_of(token))
            stale = bearer(mint(subject, ttl=600, now=time.time() - 3600))  # expired
            make, orders = shopper_request, own_orders(crng, i, 4)
            if crng.random() < config.mobile_share:  # home and phone
                addresses = (*addresses, mobile_address(phones))
                phones += 1
            wide = crng.random() < config.browser_share
        group = group_of(i) + ("+phone" if len(addresses) > 1 else "")
        client = Client(name, "normal", addresses, subject, creds | {subject}, factor, group=group)
        for t in arrivals(
            crng, 0.0, end, normal_rate_of(rate, end, surge_of(factor)), rate * 1.3 * factor
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
    ci_orders = own_orders(crng, 5000, 20)
    for t in steady(crng, 0.0, end, config.heavy_rate):
        heavy.events.append(
            Event(t, HEAVY_ADDRESS, ci_request(crng, key_header(ci_secret), ci_orders))
        )
    clients.append(heavy)

    starts = {
        name: config.attack_start + k * config.attack_stagger for k, name in enumerate(ATTACKERS)
    }

    # -- the credential stuffer: bad JWTs of many subjects, unknown API keys, a rotating /24
    crng = random.Random(f"{config.seed}:stuffer")
    addrs = stuffer_addresses(config.stuffer_addresses)
    stuffer = Client("stuffer", "stuffer", addrs)
    for k, t in enumerate(steady(crng, starts["stuffer"], end, config.stuffer_rate)):
        path = "/v1/orders"
        if crng.random() < 0.5:
            path = "/v1/orders" if crng.random() < 0.7 else "/v1/me"
            subject = f"user-{crng.randrange(10_000, 99_999)}"
            forged = devissuer.mint(
                attacker_key, issuer=issuer, subject=subject, audience=AUDIENCE, scopes=SCOPES,
                headers={"kid": key.kid},
            )  # fmt: skip
            auth = bearer(forged)
        else:
            auth = key_header(f"sk-{crng.getrandbits(64):016x}")
        stuffer.events.append(Event(t, addrs[k % len(addrs)], Request("GET", path, auth)))
    clients.append(stuffer)

    # -- the enumerator: a valid token walking order ids one by one
    crng = random.Random(f"{config.seed}:enumerator")
    token = mint("user-scraper")
    enumerator = Client(
        "enumerator", "enumerator", (ENUMERATOR_ADDRESS,), "user-scraper",
        credential_names(token, jti_of(token)) | {"user-scraper"},
    )  # fmt: skip
    first_id = 100_000 + crng.randrange(0, 5000)
    for k, t in enumerate(steady(crng, starts["enumerator"], end, config.enumerator_rate)):
        enumerator.events.append(
            Event(
                t, ENUMERATOR_ADDRESS, Request("GET", f"/v1/orders/{first_id + k}", bearer(token))
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
        credential_names(token, jti_of(token)) | {"user-shared"},
    )
    orders = own_orders(crng, 7000, 6)
    events: list[Event] = []
    for a, addr in enumerate(s_addrs):
        begin = starts["sharer"] + a * min(0.25, 10.0 / max(len(s_addrs), 1))
        events.append(Event(begin, addr, shopper_request(crng, bearer(token), orders)))
        for t in arrivals(crng, begin, end, lambda t: config.sharer_rate, config.sharer_rate):
            events.append(Event(t, addr, shopper_request(crng, bearer(token), orders)))
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
        credential_names(token, jti_of(token)) | {"user-prober"},
    )
    t0 = starts["prober"]
    for k, probe in enumerate(PROBES):
        prober.events.append(Event(t0 + 0.3 * k, PROBER_ADDRESS, Request("GET", probe)))
    orders = own_orders(crng, 8000, 4)
    for t in arrivals(crng, t0 + 1.0, end, lambda t: config.prober_rate, config.prober_rate):
        prober.events.append(Event(t, PROBER_ADDRESS, shopper_request(crng, bearer(token), orders)))
    clients.append(prober)
    return Population(config, clients, api_keys)
