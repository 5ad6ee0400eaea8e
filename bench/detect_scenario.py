"""The detection scenario: a seeded day of traffic with attackers, through a real Envoy.

    .venv/bin/python bench/detect_scenario.py              # ~3.5 minutes
    .venv/bin/python bench/detect_scenario.py --smoke      # ~30 s, few identities

200 normal identities (JWTs and API keys, a compressed day of routes, each from
its own 127.x.y.z address), a CI pipeline at its usual heavy rate from the start,
a population-wide surge (70% of normals at 2-3x for a minute), and after the
warm-up a credential stuffer rotating over a /24, an enumerator walking
``/v1/orders/{id}``, a token shared across 40 networks and a honeypot prober.
Prints one table: per attacker, seconds from its start to its first action and the
share of its requests that reached the upstream after it; actions on the normal
population, the heavy user and the surge, split by detector. Then the load average.
Exit 1 if the target is missed (an attacker not actioned within 30 s, or any
action on a legitimate client).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scenario.model import SMOKE, ScenarioConfig
from bench.scenario.report import other_answers, table, verdict
from bench.scenario.runner import run_scenario


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="the short scenario of the e2e test")
    p.add_argument("--normals", type=int, help="normal identities (default 200; smoke 12)")
    p.add_argument("--duration", type=float, help="seconds of traffic (default 180)")
    p.add_argument(
        "--stale-share", type=float, help="legitimate requests that fail auth (default 0.02)"
    )
    p.add_argument(
        "--no-feed", action="store_true", help="without Envoy's access-log feed to the service"
    )
    p.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    p.add_argument("--warmup", default="30s", help="detection.warmup in the policy")
    p.add_argument(
        "--sections", type=Path, help="a file with other detection:/enforcement: sections"
    )
    p.add_argument("--work", type=Path, help="keep the policy, logs and state here")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    config = SMOKE if args.smoke else ScenarioConfig()
    config = config.with_(seed=args.seed)
    if args.normals is not None:
        config = config.with_(normals=args.normals)
    if args.duration is not None:
        config = config.with_(duration=args.duration)
    if args.stale_share is not None:
        config = config.with_(stale_share=args.stale_share)
    sections = args.sections.read_text() if args.sections else None
    out = run_scenario(
        config, args.work, transport=args.transport, sections=sections,
        warmup="1s" if args.smoke and args.warmup == "30s" else args.warmup,
        feed=not args.no_feed,
    )  # fmt: skip
    pop, run = out.population, out.run
    print(
        f"## Detection scenario: seed {config.seed}, {config.normals} normal identities, "
        f"{len(pop.clients)} clients, {pop.events()} requests in {run.seconds:.0f} s "
        f"({args.transport}, access-log feed {'on' if out.feed else 'off'}; "
        f"schedule {pop.fingerprint()})\n"
    )
    print(table(pop, out.actioned))
    ok, notes = verdict(pop, out.actioned)
    print()
    if not out.detection:
        print(f"detection: off: {out.note}")
    elif out.note:
        print(f"note: {out.note}")
    listed = "n/a" if out.actions is None else str(len(out.actions))
    print(f"actions listed: {listed} ({out.actions_source or 'none'})")
    print(f"other answers to legitimate clients: {other_answers(pop, out.actioned)}")
    late = sum(1 for r in run.results if r.sent - r.due > 1.0)
    print(f"requests sent more than 1 s late: {late} of {len(run.results)}")
    print(
        "load average (1/5/15 min): before "
        + " ".join(f"{x:.2f}" for x in out.loadavg_before)
        + ", after "
        + " ".join(f"{x:.2f}" for x in out.loadavg_after)
        + " (2 cores, shared)"
    )
    print(f"target (every attacker within 30 s, no false action): {'met' if ok else 'MISSED'}")
    for note in notes:
        print(f"  - {note}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "config": config.__dict__,
                    "transport": args.transport,
                    "fingerprint": pop.fingerprint(),
                    "clients": {
                        name: {
                            "kind": a.client.kind,
                            "requests": a.requests,
                            "first_action_s": a.since_start,
                            "by": a.by,
                            "after": a.after,
                            "after_upstream": a.after_upstream,
                            "denies": dict(a.denies),
                            "detectors": dict(a.detectors),
                        }
                        for name, a in out.actioned.items()
                        if a.first is not None or a.client.kind not in ("normal",)
                    },
                    "loadavg": [out.loadavg_before, out.loadavg_after],
                    "target_met": ok,
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
