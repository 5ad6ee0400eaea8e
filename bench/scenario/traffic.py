"""How the scenario's clients look and pace themselves: their source addresses, the
names an action may give their credentials, arrival processes, route mixes.

Linux routes all of 127/8 to loopback, so each client binds its own 127.x.y.z
address and Envoy sees that many client addresses. The normal population: an
office /24 of ``OFFICE`` identities (one address each), ``NAT`` identities behind
one shared egress address (a company's NAT), then eight per /24 (home ISPs); some
have a second address on a carrier NAT (their phone). Attackers live in /24s of
their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator

from bench.scenario.model import Request

# ----------------------------------------------------------------------------- addresses


#: the first OFFICE normal identities work in one office network (one /24) ...
OFFICE = 40
#: ... the next NAT ones share one address (a company's NAT egress)
NAT = 12
NAT_ADDRESS = "127.12.0.1"


def normal_address(i: int) -> str:
    """The office /24, the shared NAT address, then eight per /24 (home ISPs)."""
    if i < OFFICE:
        return f"127.10.0.{10 + i}"
    if i < OFFICE + NAT:
        return NAT_ADDRESS
    j = i - OFFICE - NAT
    return f"127.10.{1 + j // 8}.{10 + j % 8}"


def group_of(i: int) -> str:
    """Where normal identity ``i`` sends from: office, nat or home."""
    return "office" if i < OFFICE else "nat" if i < OFFICE + NAT else "home"


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


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims.get("jti", ""))


# ----------------------------------------------------------------------------- timing


def arrivals(
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


def steady(rng: random.Random, start: float, end: float, rate: float) -> Iterator[float]:
    """A steady client (a pipeline, a script): ``rate`` per second with a little jitter."""
    if rate <= 0:
        return
    t = start + rng.random() / rate
    while t < end:
        yield t
        t += (0.8 + 0.4 * rng.random()) / rate


def normal_rate_of(
    rate: float, duration: float, surge: Callable[[float], float]
) -> Callable[[float], float]:
    def at(t: float) -> float:
        return rate * day(t, duration) * surge(t)

    return at


# ----------------------------------------------------------------------------- route mixes


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def key_header(key: str) -> tuple[tuple[str, str], ...]:
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


def own_orders(rng: random.Random, i: int, n: int) -> list[int]:
    base = 100_000 + i * 97
    return sorted(rng.sample(range(base, base + 90), n))
