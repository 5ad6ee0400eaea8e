#!/usr/bin/env python3
"""Cost of contract validation per request, side by side in one run.

In-process engine calls (``PolicyEngine.check`` on a ready ``Request``), so only the
decision is measured, not gRPC or Envoy. Two routes that differ only in their
contract: ``/plain`` (none) and ``/validated`` (a JSON Schema for the body, typed
query parameters). Each is called with the same request, for a small body and a
32 KB body, interleaved round by round; the figures are medians over rounds.
The reference validator (jsonschema, pure Python) is timed on the same bodies for
comparison.

    .venv/bin/python bench/validation.py [--rounds 15] [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jsonschema import Draft202012Validator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.loader import load_policy

ITEM = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sku", "qty"],
    "properties": {
        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        "qty": {"type": "integer", "minimum": 1, "maximum": 100},
        "note": {"type": "string", "maxLength": 200},
    },
}
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["items"],
    "properties": {
        "customer": {"type": "string", "maxLength": 64},
        "items": {"type": "array", "maxItems": 1000, "items": ITEM},
    },
}
CONTRACT = {
    "content_types": ["application/json"],
    "max_body_bytes": 65536,
    "body": SCHEMA,
    "parameters": [{"name": "dry_run", "in": "query", "schema": {"type": "boolean"}}],
}


def policy_text() -> str:
    routes = [
        {"name": "plain", "path": "/plain", "methods": ["POST"], "public": True},
        {"name": "validated", "path": "/validated", "methods": ["POST"], "public": True,
         "contract": CONTRACT},
    ]  # fmt: skip
    return json.dumps({"routes": routes})  # JSON is YAML


def body_of_size(target: int) -> bytes:
    items: list[dict[str, object]] = []
    body = b""
    while True:
        items.append({"sku": f"ABC-{len(items) % 10000:04d}", "qty": 1 + len(items) % 100,
                      "note": "gift wrap, leave at the door"})  # fmt: skip
        candidate = json.dumps({"customer": "c-42", "items": items}).encode()
        if len(candidate) > target:
            return body
        body = candidate


async def time_calls(engine: PolicyEngine, request: Request, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await engine.check(request)
    return (time.perf_counter() - started) / calls * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=400, help="calls per route per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(policy_text())
        engine = PolicyEngine(CompiledPolicy(load_policy(path)))
    reference = Draft202012Validator(SCHEMA)
    bodies = {"small": body_of_size(200), "32 KB": body_of_size(32 * 1024)}
    headers = {"content-type": "application/json"}
    print(f"# contract validation cost, {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.machine()}, "
          f"{args.rounds} rounds x {args.calls} calls, medians")  # fmt: skip
    print()
    print("| body | bytes | no contract µs/req | contract µs/req | validation µs/req "
          "| ratio | reference jsonschema µs/body |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, body in bodies.items():
        plain = Request("POST", "/plain?dry_run=false", headers=headers, body=body)
        checked = Request("POST", "/validated?dry_run=false", headers=headers, body=body)
        decision = await engine.check(checked)
        assert decision.allowed, decision
        for _ in range(3):  # warm up
            await time_calls(engine, plain, 50)
            await time_calls(engine, checked, 50)
        a: list[float] = []
        b: list[float] = []
        for _ in range(args.rounds):
            a.append(await time_calls(engine, plain, args.calls))
            b.append(await time_calls(engine, checked, args.calls))
        doc = json.loads(body)
        ref_calls = max(5, args.calls // (20 if len(body) > 4096 else 2))
        started = time.perf_counter()
        for _ in range(ref_calls):
            reference.is_valid(doc)
        ref = (time.perf_counter() - started) / ref_calls * 1e6
        base, cost = statistics.median(a), statistics.median(b)
        print(f"| {label} | {len(body)} | {base:.1f} | {cost:.1f} | {cost - base:.1f} "
              f"| {cost / base:.2f}x | {ref:.0f} |")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
