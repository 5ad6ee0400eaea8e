"""Per-decision cost of the mTLS identity step, side by side from one run:

- ``principal``: a check with Envoy's principal only (no certificate; the old path,
  the baseline);
- ``certificate hit``: the certificate Envoy includes, already seen (SHA-256 of the
  URL-encoded PEM, one table look-up): every request of a connection after its first;
- ``certificate miss``: a certificate not seen before, parsed with ``cryptography``
  (URI SANs, DNS SANs, subject) and its SPIFFE ID checked; one distinct certificate
  per call, minted before the clock starts.

Prints µs per call (best of ``--rounds``) and the ratio to ``principal``; writes the
figures to ``bench/results/svid_cost.json`` (``--out`` to change).

    python bench/svid_cost.py [--calls 20000] [--miss-calls 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authz.identity.mtls import MtlsProvider  # noqa: E402
from authz.model import Request  # noqa: E402
from authz.policy.config import MtlsProviderConfig  # noqa: E402
from tests.certs import generate_ca, issue_cert  # noqa: E402

SPIFFE_ID = "spiffe://bench.local/ns/a/sa/client"


def request(**kw: Any) -> Request:
    return Request(method="GET", path="/v1/x", host="api.bench", headers={}, **kw)


def per_call(fn: Callable[[int], Any], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1e6


def main(args: argparse.Namespace) -> dict[str, Any]:
    ca = generate_ca("bench CA")

    def cert(i: int) -> str:
        issued = issue_cert(ca, f"c{i}", uris=[f"{SPIFFE_ID}{i}"], client=True)
        return quote(issued.cert_pem, safe="")  # URL-encoded PEM, as Envoy sends it

    misses = [request(peer_certificate=cert(i)) for i in range(args.miss_calls)]
    hit = request(peer_certificate=cert(-1), principal=SPIFFE_ID)
    principal = request(principal=SPIFFE_ID)
    config = MtlsProviderConfig(name="mesh", trust_domains=("bench.local",))
    provider = MtlsProvider(config)
    provider.authenticate_now(hit)
    provider.authenticate_now(principal)

    def fresh_miss(i: int) -> Any:
        return provider.authenticate_now(misses[i])

    cases: dict[str, tuple[Callable[[int], Any], int]] = {
        "principal": (lambda i: provider.authenticate_now(principal), args.calls),
        "certificate hit": (lambda i: provider.authenticate_now(hit), args.calls),
        "certificate miss": (fresh_miss, args.miss_calls),
    }
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, (fn, calls) in cases.items():
            if name == "certificate miss":
                provider._by_certificate.clear()  # every call a certificate not seen yet
            figure = per_call(fn, calls)
            best[name] = min(best.get(name, figure), figure)
    base = best["principal"]
    return {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "results": [
            {"case": name, "us_per_call": round(us, 3), "ratio_to_principal": round(us / base, 2)}
            for name, us in best.items()
        ],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--miss-calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "svid_cost.json"))
    args = parser.parse_args()
    data = main(args)
    print(f"{'case':<20} {'us/call':>10} {'x principal':>12}")
    for row in data["results"]:
        print(f"{row['case']:<20} {row['us_per_call']:>10.2f} {row['ratio_to_principal']:>12.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
