"""The detection scenario's generator and table: seeded, shaped as described, honestly scored.

No stack here: the population is built from a seed and checked; the table is
computed from made-up answers and actions. tests/e2e/test_detect_through_envoy.py
runs the smoke scenario through a real Envoy.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from pathlib import Path

import pytest

from authz import devissuer
from bench.scenario.driver import Result, Run
from bench.scenario.model import ATTACKERS, PROBES, SMOKE, Population, ScenarioConfig
from bench.scenario.population import build
from bench.scenario.report import ActionRecord, analyse, table, verdict
from bench.scenario.runner import actions_from_log, parse_actions
from bench.scenario.traffic import NAT, NAT_ADDRESS

ISSUER = "https://issuer.test"


@pytest.fixture(scope="module")
def key() -> devissuer.DevKey:
    return devissuer.generate_key("ES256")


@pytest.fixture(scope="module")
def full(key: devissuer.DevKey) -> Population:
    return build(ScenarioConfig(), key, ISSUER)


def test_same_seed_same_schedule_other_seed_other(key: devissuer.DevKey) -> None:
    a = build(SMOKE, key, ISSUER)
    b = build(SMOKE, key, ISSUER)
    c = build(SMOKE.with_(seed=11), key, ISSUER)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.events() == b.events()


def test_population_shape(full: Population) -> None:
    cfg = full.config
    kinds = Counter(c.kind for c in full.clients)
    assert kinds == {"normal": 200, "heavy": 1, **dict.fromkeys(ATTACKERS, 1)}
    # every normal identity has its own subject and credential; all but the 12 behind
    # one NAT address their own address
    normals = full.by_kind("normal")
    assert len({c.subject for c in normals}) == 200
    assert len({c.addresses[0] for c in normals}) == 200 - NAT + 1
    assert sum(1 for c in normals if c.addresses[0] == NAT_ADDRESS) == NAT
    assert Counter(c.group.split("+")[0] for c in normals) == {"office": 40, "nat": 12, "home": 148}
    assert sum(1 for c in normals if c.subject.startswith("partner-")) == 20  # API keys
    assert len(full.api_keys) == 21  # and the CI pipeline's
    # no address is shared between two clients, and attackers are outside the normals' /24s
    seen: Counter[str] = Counter(a for c in full.clients for a in c.addresses)
    del seen[NAT_ADDRESS]
    assert max(seen.values()) == 1
    normal_nets = {ipaddress.ip_network(f"{c.addresses[0]}/24", strict=False) for c in normals}
    for name in ATTACKERS:
        for addr in full.client(name).addresses:
            assert all(ipaddress.ip_address(addr) not in n for n in normal_nets)
    # an office network (one /24 of 40), phones on a carrier NAT, a little legitimate failure
    nets = Counter(
        str(ipaddress.ip_network(f"{a}/24", strict=False)) for c in normals for a in c.addresses
    )
    assert nets["127.10.0.0/24"] == 40
    phones = [c for c in normals if len(c.addresses) == 2]
    assert 15 < len(phones) < 45 and nets["127.30.0.0/24"] == len(phones)
    assert all(c.group.endswith("+phone") for c in phones)
    stale = sum(1 for c in normals for e in c.events if e.request.tag == "stale")
    assert 0.01 < stale / sum(len(c.events) for c in normals) < 0.03
    # the heavy user runs from the start at its rate; attackers start after the warm-up
    heavy = full.client("heavy-ci")
    assert heavy.start < 1.0
    assert len(heavy.events) == pytest.approx(cfg.heavy_rate * cfg.duration, rel=0.05)
    for name in ATTACKERS:
        assert full.client(name).start >= cfg.attack_start


def test_attackers_behave_as_described(full: Population) -> None:
    cfg = full.config
    stuffer = full.client("stuffer")
    assert len({e.source for e in stuffer.events}) == cfg.stuffer_addresses
    assert len({ipaddress.ip_network(f"{e.source}/24", strict=False) for e in stuffer.events}) == 1
    creds = {e.request.headers for e in stuffer.events}
    assert len(creds) == len(stuffer.events)  # a new credential every time

    ids = [int(e.request.path.rsplit("/", 1)[1]) for e in full.client("enumerator").events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # sequential
    assert all(e.request.path.startswith("/v1/orders/") for e in full.client("enumerator").events)

    sharer = full.client("sharer")
    assert len({e.source for e in sharer.events}) == cfg.sharer_addresses == 40
    assert len({e.request.headers for e in sharer.events}) == 1  # one token
    # 40 addresses within the first 10 s of its start
    firsts = {}
    for e in sharer.events:
        firsts.setdefault(e.source, e.at)
    assert max(firsts.values()) - sharer.start <= 10.0

    prober = full.client("prober")
    assert tuple(e.request.path for e in prober.events[: len(PROBES)]) == PROBES
    assert all(e.request.headers for e in prober.events[len(PROBES) :])  # then a shopper


def test_surge_is_population_wide(full: Population) -> None:
    cfg = full.config
    surgers = [c for c in full.by_kind("normal") if c.surge > 1.0]
    assert len(surgers) == 140
    s0, s1 = cfg.surge_start, cfg.surge_start + cfg.surge_length

    def rate(lo: float, hi: float) -> float:
        return sum(1 for c in full.by_kind("normal") for e in c.events if lo <= e.at < hi) / (
            hi - lo
        )

    before, during = rate(s0 - 60, s0), rate(s0, s1)
    assert 1.6 < during / before < 3.0


def _result(client: str, sent: float, status: int = 200, reason: str = "") -> Result:
    return Result(client, "127.0.0.1", sent, sent, 0.001, status, reason, "/x")


def test_table_from_denies_and_listed_actions(key: devissuer.DevKey) -> None:
    pop = build(SMOKE, key, ISSUER)
    prober, sharer = pop.client("prober"), pop.client("sharer")
    p0, s0 = prober.start, sharer.start
    results = [
        _result("prober", p0, 404, "undeclared_route"),
        _result("prober", p0 + 1),
        _result("prober", p0 + 2, 403, "caller_blocked"),
        _result("prober", p0 + 3, 403, "caller_blocked"),
        _result("sharer", s0 + 1),
        _result("sharer", s0 + 6),
        _result("sharer", s0 + 7, 401, "credential_revoked"),
        _result("normal-0001", 5.0),
    ]
    wall = 1_000_000.0
    jti = next(c for c in sharer.credentials if len(c) == 22)  # the token's jti
    actions = [
        ActionRecord(wall + s0 + 5.5, "token_sharing", "revoke", "token", jti),
        ActionRecord(wall + p0 + 0.5, "honeypot", "block", "address", prober.addresses[0]),
        # a prefix block over the stuffer's /24 touches no normal identity
        ActionRecord(wall + 20, "credential_stuffing", "block", "prefix", "127.66.6.0/24"),
        # a monitor-mode action is listed, not counted as the first action
        ActionRecord(wall + 3, "enumeration", "throttle", "subject", "user-0002", monitor=True),
        # so is a log-only one
        ActionRecord(wall + 4, "data_volume", "log", "subject", "user-0003"),
    ]
    out = analyse(pop, Run(results, wall, 24.0), actions)
    assert out["prober"].since_start == pytest.approx(0.5)
    assert out["prober"].by == "honeypot:block"
    assert (out["prober"].after, out["prober"].after_upstream) == (3, 1)
    assert out["sharer"].since_start == pytest.approx(5.5)
    assert (out["sharer"].after, out["sharer"].after_upstream) == (2, 1)
    assert out["stuffer"].first == pytest.approx(20.0)
    assert out["normal-0001"].first is None
    assert out["normal-0002"].first is None  # monitor only
    assert out["normal-0002"].detectors == {"enumeration:throttle (monitor)": 1}
    assert out["normal-0003"].first is None and out["normal-0003"].listed == [
        (4.0, "data_volume:log")
    ]
    text = table(pop, out)
    assert "| prober | attacker | 1 addr | 4 | yes | 0.5 | honeypot:block | 1/3 (33.3%) |" in text
    assert "| enumerator | attacker | 1 addr | 0 | no | never | - | - |" in text
    assert (
        "| normal identities | legitimate | 12 | 1 | 0 (0.0%) | - "
        "| data_volume:log 1, enumeration:throttle (monitor) 1 | 0 denied (0.0%) |"
    ) in text
    ok, notes = verdict(pop, out)
    assert not ok and notes == ["enumerator: never actioned"]


def test_false_actions_split_by_detector(key: devissuer.DevKey) -> None:
    pop = build(
        ScenarioConfig(normals=20, duration=60, surge_start=20, surge_length=20), key, ISSUER
    )
    surger = next(c for c in pop.by_kind("normal") if c.surge > 1.0)
    wall = 50.0
    results = [_result(surger.name, 25.0, 429, "caller_throttled"), _result("heavy-ci", 3.0)]
    actions = [ActionRecord(wall + 24.0, "enumeration", "throttle", "address", surger.addresses[0])]
    out = analyse(pop, Run(results, wall, 60.0), actions)
    text = table(pop, out)
    assert "| normal identities | legitimate | 20 | 1 | 1 (5.0%) |" in text
    assert "enumeration:throttle 1 | 1 denied (100.0%) |" in text
    assert "| surge (20-40 s) | legitimate |" in text
    _, notes = verdict(pop, out)
    assert f"{surger.name}: false action (enumeration:throttle)" in notes


def test_actions_from_the_service_log(tmp_path: Path) -> None:
    log = tmp_path / "authz.log"
    log.write_text(
        "2026-12-02 14:03:53,972 WARNING authz.detect [14467] action credential_stuffing block "
        "prefix=127.66.6.0/24 ttl=900s (enforce) evidence={'feature': 'prefix_failures'}\n"
        "2026-12-02 14:03:53,973 WARNING authz.respond [14467] action: block prefix 127.66.6.0/24\n"
        "2026-12-02 14:04:03,869 WARNING authz.detect [14467] action honeypot block "
        "address=127.88.0.9 ttl=3600s (monitor) evidence={'path': '/.env'}\n"
    )
    actions = actions_from_log(log)
    assert [(a.detector, a.response, a.target_kind, a.target, a.monitor) for a in actions] == [
        ("credential_stuffing", "block", "prefix", "127.66.6.0/24", False),
        ("honeypot", "block", "address", "127.88.0.9", True),
    ]
    assert actions[1].time - actions[0].time == pytest.approx(9.897)
    assert actions_from_log(tmp_path / "missing.log") == []


def test_actions_from_the_control_plane() -> None:
    text = json.dumps(
        {
            "actions": [
                {"time": 1796220233.972, "detector": "credential_stuffing", "response": "block",
                 "target_kind": "prefix", "target": "127.66.6.0/24", "ttl": 900.0,
                 "reason": "caller_blocked", "evidence": {"feature": "prefix_failures"},
                 "monitor": False, "outcome": "enforced", "detail": ""},
                {"time": 1796220234.0, "detector": "enumeration", "response": "throttle",
                 "target_kind": "token", "target": "abc", "ttl": 600.0, "reason": "caller_throttled",
                 "evidence": {}, "monitor": True, "outcome": "monitor", "detail": ""},
                {"time": 1796220235.0, "detector": "data_volume", "response": "log",
                 "target_kind": "subject", "target": "u", "ttl": 600.0, "reason": "",
                 "evidence": {}, "monitor": False, "outcome": "logged", "detail": ""},
                {"time": 1796220236.0, "detector": "honeypot", "response": "block",
                 "target_kind": "address", "target": "127.88.0.9", "ttl": 3600.0,
                 "reason": "caller_blocked", "evidence": {}, "monitor": False, "outcome": "kept",
                 "detail": ""},
            ],
            "workers": 1,
        }
    )  # fmt: skip
    actions = parse_actions(text)
    assert [(a.detector, a.outcome, a.in_force) for a in actions] == [
        ("credential_stuffing", "enforced", True),
        ("enumeration", "monitor", False),
        ("data_volume", "logged", False),
        ("honeypot", "kept", True),
    ]
