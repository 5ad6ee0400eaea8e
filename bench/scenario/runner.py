"""Run the scenario against the real stack: Envoy -> ``authz serve`` -> an echo upstream.

:func:`run_scenario` builds the population from the config's seed, writes the
scenario policy (keys from a JWKS file, so no issuer process competes for the
CPU), starts :class:`~authz.demo.stack.LocalStack`, drives the traffic, asks the
control plane for the actions it took, and returns everything the table needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz import devissuer
from authz.demo.stack import LocalStack
from bench.scenario import policy as scenario_policy
from bench.scenario.driver import Run, drive
from bench.scenario.model import Population, ScenarioConfig
from bench.scenario.population import build
from bench.scenario.report import Actioned, ActionRecord, analyse

ISSUER = "https://issuer.scenario"


@dataclass
class Outcome:
    population: Population
    run: Run
    #: None: the control plane lists no actions (not in this build, or it failed)
    actions: list[ActionRecord] | None
    actioned: dict[str, Actioned]
    #: False: this build's loader refuses the detection/enforcement sections
    detection: bool
    note: str
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    policy: Path
    #: where the actions came from: "control plane", "service log" or ""
    actions_source: str = ""
    #: Envoy's access-log feed reached the service (False: not in this build, or off)
    feed: bool = False


def _ask_control(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", *args, "--control", f"127.0.0.1:{stack.control_port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def fetch_actions(stack: LocalStack) -> tuple[list[ActionRecord] | None, str]:
    """The actions the service lists over its control plane (``authz actions --json``)."""
    try:
        done = _ask_control(stack, "actions", "--json", "--limit", "100000")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"authz actions: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        return None, f"authz actions: exit {done.returncode}: {last[:200]}"
    try:
        return parse_actions(done.stdout), ""
    except (ValueError, TypeError, AttributeError):
        return None, f"authz actions: not its JSON: {done.stdout[:200]!r}"


def parse_actions(text: str) -> list[ActionRecord]:
    """``authz actions --json`` (``{"actions": [{"time", "detector", ...}], "workers"}``)."""
    data = json.loads(text)
    rows = data["actions"] if isinstance(data, dict) else data
    return [
        ActionRecord(
            time=float(row.get("time", 0.0)),
            detector=str(row.get("detector", "")),
            response=str(row.get("response", "")),
            target_kind=str(row.get("target_kind", "")),
            target=str(row.get("target", "")),
            monitor=bool(row.get("monitor", False)),
            outcome=str(row.get("outcome", "")),
        )
        for row in rows
    ]


_ACTION_LINE = re.compile(
    r"^(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}) \w+ authz\.detect \[\d+\] "
    r"action (?P<detector>\w+) (?P<response>\w+) (?P<kind>\w+)=(?P<target>\S+) "
    r"ttl=\S+ \((?P<mode>\w+)\)"
)


def actions_from_log(path: Path) -> list[ActionRecord]:
    """The actions the detectors logged (``authz.detect``: ``action DETECTOR RESPONSE
    KIND=TARGET ttl=... (enforce|monitor)``), when the control plane cannot list them."""
    out = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        m = _ACTION_LINE.match(line)
        if m is None:
            continue
        when = time.mktime(time.strptime(m["date"], "%Y-%m-%d %H:%M:%S")) + int(m["ms"]) / 1000
        out.append(
            ActionRecord(
                when, m["detector"], m["response"], m["kind"], m["target"], m["mode"] == "monitor"
            )
        )
    return out


def run_scenario(
    config: ScenarioConfig,
    work: Path | None = None,
    *,
    transport: str = "grpc",
    sections: str | None = None,
    warmup: str = "30s",
    serve_args: tuple[str, ...] = (),
    feed: bool = True,
) -> Outcome:
    work = work or Path(tempfile.mkdtemp(prefix="authz-scenario-"))
    key = devissuer.generate_key("ES256")
    population = build(config, key, ISSUER)
    path = scenario_policy.write(
        population, work, issuer=ISSUER, jwks=devissuer.jwks([key]), sections=sections,
        warmup=warmup,
    )  # fmt: skip
    detection, note = scenario_policy.supported(path)
    if not detection:  # before detection lands: the same traffic, no detection
        path = scenario_policy.write(
            population, work, issuer=ISSUER, jwks=devissuer.jwks([key]), sections=""
        )
        note = f"this build refuses the detection/enforcement sections ({note.splitlines()[0]})"
    extra: dict[str, Any] = {}
    if feed and "access_log" in {f.name for f in dataclasses.fields(LocalStack)}:
        extra["access_log"] = "service"  # Envoy's access-log feed to the service
    stack = LocalStack(
        policy=path, state_dir=work / "state", transport=transport, envoy_timeout=2.0,
        extra_serve_args=serve_args, **extra,
    )  # fmt: skip
    before = os.getloadavg()
    stack.start()
    try:
        run = asyncio.run(drive(population, "127.0.0.1", stack.listen_port))
        after = os.getloadavg()
        time.sleep(0.5)  # the scorer's last drain
        actions, why = fetch_actions(stack) if detection else (None, "")
        source = "control plane" if actions is not None else ""
    finally:
        stack.stop()
    if detection and actions is None:
        actions, source = actions_from_log(stack.state_dir / "authz.log"), "service log"
        note = (note + "; " if note else "") + f"actions from the service's log ({why})"
    return Outcome(
        population, run, actions, analyse(population, run, actions), detection, note, before,
        after, path, source, bool(extra),
    )  # fmt: skip
