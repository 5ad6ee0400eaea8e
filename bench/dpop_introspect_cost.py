"""Per-decision cost of the identity step for sender-constrained and opaque tokens,
side by side from one run, against a plain JWT (the same process, the same keys):

- ``jwt hit``: a cached bearer JWT (the common case; the baseline);
- ``jwt miss``: the same, verified in full (signature and claims);
- ``dpop``: a cached DPoP-bound JWT with a fresh proof per call (the proof is
  verified every time: signature with its jwk, htm/htu/iat/ath, RFC 7638 thumbprint,
  jti into the in-memory replay cache); proofs are minted before the clock starts;
- ``x5t``: a cached certificate-bound JWT (thumbprint of the client certificate);
- ``introspection hit``: an opaque token answered from the cache;
- ``introspection miss``: one POST to a real introspection endpoint on loopback
  (a thread in this process), in a worker thread as in production.

Prints µs per call (best of ``--rounds``) and the ratio to ``jwt hit``; writes the
figures to ``bench/results/dpop_introspect_cost.json`` (``--out`` to change).

    python bench/dpop_introspect_cost.py [--calls 2000] [--miss-calls 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authz import devissuer  # noqa: E402
from authz.identity.base import WAIT  # noqa: E402
from authz.identity.introspection import IntrospectionProvider  # noqa: E402
from authz.identity.jwt import JwtProvider  # noqa: E402
from authz.model import Request  # noqa: E402
from authz.policy.config import (  # noqa: E402
    DpopConfig,
    IntrospectionProviderConfig,
    JwtProviderConfig,
)
from tests.certs import generate_ca, issue_cert  # noqa: E402
from tests.dpop_support import jkt, proof, x5t  # noqa: E402
from tests.introspection_server import IntrospectionServer  # noqa: E402

ISSUER = "https://issuer.bench"
URL = "https://api.bench/v1/orders"


def request(auth: str, **kw: Any) -> Request:
    headers = {"authorization": auth, **kw.pop("headers", {})}
    return Request(method="GET", path="/v1/orders", host="api.bench", headers=headers,
                   scheme="https", **kw)  # fmt: skip


async def per_call(fn: Callable[[int], Awaitable[Any]], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        await fn(i)
    return (time.perf_counter() - start) / calls * 1e6


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-dpop-"))
    key = devissuer.generate_key("ES256")
    client = devissuer.generate_key("ES256")
    (tmp / "jwks.json").write_text(json.dumps(devissuer.jwks([key])))
    config = JwtProviderConfig(
        name="b", issuer=ISSUER, audiences=("api",), jwks_file=str(tmp / "jwks.json"),
        dpop=DpopConfig(replay_cache_size=10_000_000),
    )  # fmt: skip
    jwtp = JwtProvider(config)
    await jwtp.start()

    def mint(**claims: Any) -> str:
        return devissuer.mint(key, issuer=ISSUER, subject="alice", audience="api",
                              ttl=3600, extra_claims=claims)  # fmt: skip

    plain = mint()
    hit_req = request(f"Bearer {plain}")
    assert await jwtp.authenticate(hit_req) is not None
    miss_tokens = [mint(jti=f"m{i}") for i in range(args.miss_calls * args.rounds)]
    bound = mint(cnf={"jkt": jkt(client)})
    n = args.calls * args.rounds
    proofs = [proof(client, "GET", URL, bound) for _ in range(n + 1)]
    dpop_auth = f"DPoP {bound}"
    assert await jwtp.authenticate(request(dpop_auth, headers={"dpop": proofs[-1]})) is not None
    ca = generate_ca("bench CA")
    pem = issue_cert(ca, "c", uris=["spiffe://b/c"], client=True).cert_pem
    cert_token = mint(cnf={"x5t#S256": x5t(pem)})
    cert_req = request(f"Bearer {cert_token}", peer_certificate=quote(pem, safe=""))
    assert await jwtp.authenticate(cert_req) is not None

    server = IntrospectionServer().start()
    (tmp / "secret").write_text("s3cret")
    intro = IntrospectionProvider(IntrospectionProviderConfig(
        name="o", endpoint=server.url, client_id="authz", client_secret_file=str(tmp / "secret"),
        cache_size=1_000_000,
    ))  # fmt: skip
    await intro.start()
    server.tokens["opaque"] = {"active": True, "sub": "alice", "scope": "a"}
    for i in range(args.miss_calls * args.rounds):
        server.tokens[f"o{i}"] = {"active": True, "sub": "alice", "scope": "a"}
    opaque_req = request("Bearer opaque")
    assert await intro.authenticate(opaque_req) is not None

    def now(provider: Any, req: Request) -> Callable[[int], Awaitable[Any]]:
        async def call(i: int) -> Any:  # what the identity stage does: sync first
            found = provider.authenticate_now(req)
            return await provider.authenticate(req) if found is WAIT else found

        return call

    cursor = {"miss": 0, "dpop": 0, "intro": 0}

    async def jwt_miss(i: int) -> Any:
        t = miss_tokens[cursor["miss"]]
        cursor["miss"] += 1
        return await jwtp.verify(t)

    async def dpop(i: int) -> Any:
        p = proofs[cursor["dpop"]]
        cursor["dpop"] += 1
        req = request(dpop_auth, headers={"dpop": p})
        found = jwtp.authenticate_now(req)
        return await jwtp.authenticate(req) if found is WAIT else found

    async def intro_miss(i: int) -> Any:
        t = f"o{cursor['intro']}"
        cursor["intro"] += 1
        return await intro.authenticate(request(f"Bearer {t}"))

    cases: list[tuple[str, Callable[[int], Awaitable[Any]], int]] = [
        ("jwt hit", now(jwtp, hit_req), args.calls),
        ("jwt miss", jwt_miss, args.miss_calls),
        ("dpop", dpop, args.calls),
        ("x5t", now(jwtp, cert_req), args.calls),
        ("introspection hit", now(intro, opaque_req), args.calls),
        ("introspection miss", intro_miss, args.miss_calls),
    ]
    best: dict[str, float] = {name: float("inf") for name, _, _ in cases}
    for _ in range(args.rounds):  # interleaved rounds: a busy box hurts all alike
        for name, fn, calls in cases:
            best[name] = min(best[name], await per_call(fn, calls))
    server.stop()
    await jwtp.aclose()
    base = best["jwt hit"]
    return {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "calls": args.calls, "miss_calls": args.miss_calls, "rounds": args.rounds,
        "results": [
            {"case": name, "us_per_call": round(best[name], 2),
             "ratio_to_jwt_hit": round(best[name] / base, 1)}
            for name, _, _ in cases
        ],
    }  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--miss-calls", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", default=str(ROOT / "bench" / "results" / "dpop_introspect_cost.json")
    )
    args = parser.parse_args()
    data = asyncio.run(main(args))
    print(f"{'case':<20} {'us/call':>10} {'x jwt hit':>10}")
    for row in data["results"]:
        print(f"{row['case']:<20} {row['us_per_call']:>10.2f} {row['ratio_to_jwt_hit']:>10.1f}")
    if args.out != "-":
        Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
