"""Router.match per call, this tree vs another checkout (the route plan refactor).

    python bench/route_plan.py [--before /work/main]

Runs the same timing in two interpreters, one importing ``authz`` from this tree and
one from ``--before``, on a policy with host-specific and any-host routes, and prints
both and their ratio (after / before): best of three alternating runs each, as
the machine is shared. No assertion.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

SNIPPET = r"""
import time, timeit
from authz.policy.config import RouteConfig
from authz.routing import Router

def r(name, path, *methods, hosts=()):
    return RouteConfig(name=name, path=path, methods=methods or ("GET",), hosts=hosts)

routes = [r("health", "/healthz"), r("list", "/v1/orders"), r("export", "/v1/orders/export"),
          r("get", "/v1/orders/{id}"), r("items", "/v1/orders/{id}/items/{item}", "GET", "PUT"),
          r("static", "/static/{rest=**}", "*"),
          r("api", "/v1/admin/{id}", hosts=("api.example.com",)),
          r("wild", "/v1/wild", hosts=("*.example.com",))]
router = Router(routes)
calls = [("localhost:8080", "GET", "/v1/orders/42"), ("api.example.com", "GET", "/v1/admin/7"),
         ("x.example.com", "GET", "/v1/wild"), ("localhost", "GET", "/healthz"),
         ("localhost", "PUT", "/v1/orders/1/items/2"), ("other", "GET", "/static/a/b.css")]
def run():
    for c in calls:
        router.match(*c)
n = 20000
best = min(timeit.repeat(run, number=n, repeat=7, timer=time.process_time)) / (n * len(calls))
print(best * 1e9)
"""


def measure(root: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SNIPPET],
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="/work/main", help="checkout to compare with")
    args = parser.parse_args()
    # alternate, best of three each: the machine is shared and one pair is noise
    befores, afters = [], []
    for _ in range(3):
        befores.append(measure(Path(args.before)))
        afters.append(measure(HERE))
    before, after = min(befores), min(afters)
    print(
        f"Router.match: before {before:.0f} ns/call, after {after:.0f} ns/call, "
        f"ratio {after / before:.2f}"
    )


if __name__ == "__main__":
    main()
