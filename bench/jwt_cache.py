"""Cost of a verified-token cache hit, before and after it checks its key.

``JwtProvider.authenticate`` for a cached token, side by side in one process:

- ``before``: the hit as it was (token -> (identity, exp) and one clock comparison);
- ``after``: the hit as it is (also: keys not stale, key still served, in O(1)).

Both run the same header parsing; they differ only in the cache lookup. Prints
the best round of each (µs per call) and two ratios after/before: of the best
rounds, and the median over rounds of a back-to-back pair (robust to a busy box).

    python bench/jwt_cache.py [--calls 20000] [--rounds 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz import devissuer
from authz.identity.bearer import parse_authorization, query_has_access_token
from authz.identity.jwt import JwtProvider
from authz.model import Identity, Request
from authz.policy.config import JwtProviderConfig

ISSUER = "https://issuer.bench"


class BeforeProvider(JwtProvider):
    """The cache hit before the fix: an entry trusted until ``exp``, whatever the keys do."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._old: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    async def authenticate(self, request: Request) -> Identity | None:
        value = request.headers.get(self._header)
        if value is None:
            return None
        token = parse_authorization(value, dedicated=self._dedicated)
        if token is None:
            return None
        path = request.path
        if "?" in path and query_has_access_token(path):
            raise AssertionError("not benchmarked")
        entry = self._old.get(token)
        if entry is not None:
            if self._clock() < entry[1]:
                self._old.move_to_end(token)
                self._cache_hit.inc()
                return entry[0]
            del self._old[token]
        identity, valid_until = await self.verify(token)
        self._old[token] = (identity, valid_until)
        return identity


def _sync(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the call waited on I/O: not a cache hit")


def timeit(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


async def measure(calls: int, rounds: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="authz-jwt-cache-"))
    key = devissuer.generate_key("ES256")
    jwks = work / "jwks.json"
    jwks.write_text(json.dumps(devissuer.jwks([key])))
    config = JwtProviderConfig(
        name="bench", issuer=ISSUER, audiences=("api",), algorithms=("ES256",),
        jwks_file=str(jwks), jwks_ttl=1e9, jwks_refresh_interval=1e9,
    )  # fmt: skip
    token = devissuer.mint(key, issuer=ISSUER, subject="alice", audience="api", ttl=3000)
    request = Request(
        method="GET", path="/v1/orders/1", headers={"authorization": f"Bearer {token}"}
    )
    providers: dict[str, JwtProvider] = {
        "before": BeforeProvider(config),
        "after": JwtProvider(config),
    }
    for p in providers.values():
        await p.start()
        await p.authenticate(request)  # verified once, cached from now on
    best = {name: float("inf") for name in providers}
    ratios: list[float] = []
    order = list(providers.items())
    for _ in range(rounds):
        order.reverse()  # neither path always runs first
        took: dict[str, float] = {}
        for name, p in order:

            def hit(p: JwtProvider = p) -> Any:
                return _sync(p.authenticate(request))

            took[name] = timeit(hit, calls)
            best[name] = min(best[name], took[name])
        ratios.append(took["after"] / took["before"])  # a pair run back to back
    for p in providers.values():
        assert p.verifications == 1, "every timed call must be a cache hit"
        await p.aclose()
    return {**best, "paired": statistics.median(ratios)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    best = asyncio.run(measure(args.calls, args.rounds))
    for name in ("before", "after"):
        print(f"{name:7} {best[name]:6.3f} µs/hit (best round)")
    print(f"ratio after/before {best['after'] / best['before']:.3f} (best rounds)")
    print(f"ratio after/before {best['paired']:.3f} (median of back-to-back pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
