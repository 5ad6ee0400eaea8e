"""Each detector fires on its attack pattern, and not on normal traffic or a surge."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.detect.events import Observation, ResponseObservation
from authz.detect.scorer import Scorer
from authz.policy.loader import load_policy

from .helpers import Sink, normal_traffic, obs, scorer

WARM = 120.0  # past the warm-up of the default config


def warmed() -> tuple[Scorer, Sink]:
    s, sink = scorer()
    normal_traffic(s, 0.0, WARM)
    assert sink.actions == []
    return s, sink


def test_normal_traffic_and_a_population_surge_action_nobody() -> None:
    s, sink = warmed()
    normal_traffic(s, WARM, WARM + 120, every=6.0, seed=2)
    normal_traffic(s, WARM + 120, WARM + 300, every=1.5, seed=3)  # everyone four times as busy
    assert sink.actions == []


def test_a_legitimate_heavy_user_is_learned_not_actioned() -> None:
    s, sink = scorer()
    for t in range(0, 400):
        for k in range(5):  # five a second, from the start, on a few ids
            s.offer(
                obs(
                    t + k / 5,
                    subject="ci",
                    credential="tok-ci",
                    path=f"/v1/orders/{k}",
                    client_address="10.50.0.1",
                )
            )
        s.drain()
    normal_traffic(s, 0.0, 400.0)
    assert sink.actions == []


def test_honeypot_acts_on_the_first_hit_even_during_warmup() -> None:
    s, sink = scorer()
    s.offer(
        obs(
            1.0,
            route="",
            shape="",
            path="/.git/config",
            client_address="10.9.0.1",
            identity_kind="anonymous",
            subject="",
            credential="",
            status=404,
            reason="undeclared_route",
            allowed=False,
        )
    )
    s.drain()
    assert [(a.detector, a.target_kind, a.target, a.response) for a in sink.actions] == [
        ("honeypot", "address", "10.9.0.1", "block")
    ]
    s.offer(
        obs(
            2.0,
            path="/.env",
            route="",
            client_address="10.9.0.1",
            subject="mallory",
            credential="tok-m",
        )
    )
    s.drain()
    # the address is blocked already (in force: not again); the identity is new
    assert [(a.target_kind, a.target) for a in sink.actions[1:]] == [("token", "tok-m")]


def test_credential_stuffing_from_one_address() -> None:
    s, sink = warmed()
    t = WARM
    for i in range(30):
        t += 0.5
        s.offer(
            obs(
                t,
                route="login",
                path="/v1/login",
                identity_kind="anonymous",
                subject="",
                credential=f"guess-{i}",
                allowed=False,
                status=401,
                reason="token_bad_signature",
                client_address="192.0.2.7",
            )
        )
    s.drain()
    [action] = sink.actions
    assert (action.detector, action.target_kind, action.target) == (
        "credential_stuffing",
        "address",
        "192.0.2.7",
    )
    assert action.evidence["feature"] == "distinct_identities"
    assert action.reason == "caller_blocked"


def test_credential_stuffing_rotating_over_a_prefix() -> None:
    s, sink = warmed()
    t = WARM
    for i in range(60):  # two failures per address, each with the same few guesses
        t += 0.5
        s.offer(
            obs(
                t,
                route="login",
                path="/v1/login",
                identity_kind="anonymous",
                subject="",
                credential=f"guess-{i % 3}",
                allowed=False,
                status=401,
                reason="api_key_unknown",
                client_address=f"198.51.100.{i // 2}",
            )
        )
    s.drain()
    assert [(a.target_kind, a.target) for a in sink.actions] == [("prefix", "198.51.100.0/24")]
    assert sink.actions[0].evidence["prefix_failures"] >= 40


def test_enumeration_of_sequential_ids() -> None:
    s, sink = warmed()
    for i in range(40):  # slow, but a walk
        s.offer(
            obs(
                WARM + i,
                subject="scraper",
                credential="tok-s",
                path=f"/v1/orders/{5000 + i}",
                client_address="10.7.7.7",
            )
        )
    s.drain()
    [action] = sink.actions
    assert (action.detector, action.target_kind, action.target, action.response) == (
        "enumeration",
        "token",
        "tok-s",
        "throttle",
    )
    assert action.evidence["feature"] in ("sequential", "distinct_ids")


def test_enumeration_of_random_ids_and_by_volume() -> None:
    s, sink = warmed()
    import random

    rng = random.Random(7)
    for i in range(80):
        s.offer(
            obs(
                WARM + i * 0.2,
                subject="bola",
                credential="tok-b",
                path=f"/v1/orders/{rng.randrange(10**6)}",
                client_address="10.7.7.8",
            )
        )
    s.drain()
    assert [(a.detector, a.evidence["feature"]) for a in sink.actions] == [
        ("enumeration", "distinct_ids")
    ]
    s2, sink2 = warmed()
    for i in range(400):  # one list endpoint, hammered
        s2.offer(
            obs(
                WARM + i * 0.05,
                route="list",
                path="/v1/orders",
                subject="hammer",
                credential="tok-h",
                client_address="10.7.7.9",
            )
        )
    s2.drain()
    assert [(a.detector, a.evidence["feature"]) for a in sink2.actions] == [
        ("enumeration", "volume")
    ]
    assert sink2.actions[0].evidence["population"] < sink2.actions[0].evidence["requests"]


def test_token_sharing_across_addresses() -> None:
    s, sink = warmed()
    for i in range(40):
        s.offer(
            obs(
                WARM + i,
                subject="leaked",
                credential="jti-leaked",
                path="/v1/orders",
                route="list",
                client_address=f"203.0.113.{i}",
            )
        )
    s.drain()
    [token] = [a for a in sink.actions if a.target_kind == "token"]
    assert (token.detector, token.target, token.response, token.reason) == (
        "token_sharing",
        "jti-leaked",
        "revoke",
        "credential_revoked",
    )
    assert token.evidence["token_addresses"] == 8
    subject = [a for a in sink.actions if a.target_kind == "subject"]
    assert [a.target for a in subject] == ["leaked"]  # 24 addresses for one subject


def test_data_volume_from_the_feed() -> None:
    from authz.detect.events import ResponseObservation

    s, sink = warmed()
    for i in range(60):
        s.offer(
            obs(
                WARM + i,
                decision_id=f"d{i}",
                route="list",
                path="/v1/orders",
                subject="exfil",
                credential="tok-x",
                client_address="10.8.8.8",
            )
        )
        s.offer(
            ResponseObservation(
                WARM + i + 0.1,
                f"d{i}",
                "list",
                "GET",
                "/v1/orders",
                "10.8.8.8",
                200,
                1_000_000,
                5.0,
                4.0,
            )
        )
    s.drain()
    [action] = sink.actions
    assert (action.detector, action.response, action.target_kind) == ("data_volume", "log", "token")
    assert action.evidence["bytes"] >= 10_000_000


def test_monitor_mode_records_the_action_as_monitor() -> None:
    s, sink = scorer(mode="monitor")
    s.offer(obs(1.0, path="/.env", route=""))
    s.drain()
    assert sink.actions and all(a.monitor for a in sink.actions)


def test_no_action_before_the_warmup_except_honeypots() -> None:
    s, sink = scorer()
    for i in range(40):
        s.offer(
            obs(1.0 + i, subject="leaked", credential="jti-early", client_address=f"203.0.113.{i}")
        )
    s.drain()
    assert sink.actions == []
    assert s.metrics.value("authz_detect_suppressed_total", "warmup") > 0


def test_a_stronger_response_passes_an_action_in_force_and_evidence_has_the_window() -> None:
    from dataclasses import replace

    from .helpers import HONEYPOT

    s, sink = scorer(honeypot=replace(HONEYPOT, response="log", identity=False))
    normal_traffic(s, 0.0, WARM)
    s.offer(
        obs(
            WARM,
            path="/.env",
            route="",
            client_address="192.0.2.9",
            identity_kind="anonymous",
            subject="",
            credential="",
            allowed=False,
            status=404,
            reason="undeclared_route",
        )
    )
    s.offer(
        obs(
            WARM + 1,
            path="/.env",
            route="",
            client_address="192.0.2.9",
            identity_kind="anonymous",
            subject="",
            credential="",
            allowed=False,
            status=404,
            reason="undeclared_route",
        )
    )
    for i in range(12):  # then stuffing from the same address: a block beats the log
        s.offer(
            obs(
                WARM + 2 + i,
                route="login",
                path="/v1/login",
                identity_kind="anonymous",
                subject="",
                credential=f"g{i}",
                allowed=False,
                status=401,
                reason="token_bad_signature",
                client_address="192.0.2.9",
            )
        )
    s.drain()
    assert [(a.detector, a.response) for a in sink.actions] == [
        ("honeypot", "log"),
        ("credential_stuffing", "block"),
    ]
    evidence = sink.actions[1].evidence
    assert evidence["caller.auth_failures"] == 10 and evidence["caller.deny_ratio"] == 1.0


def test_enumeration_collecting_404s_from_the_feed() -> None:
    import random

    from authz.detect.events import ResponseObservation

    s, sink = warmed()
    rng = random.Random(3)
    for i in range(40):  # few distinct ids per window, not a walk: only the 404s tell
        oid = str(rng.choice([11, 500, 73, 9000, 42]))
        s.offer(
            obs(
                WARM + i,
                decision_id=f"e{i}",
                subject="prober",
                credential="tok-p",
                path=f"/v1/orders/{oid}",
                client_address="10.6.6.6",
            )
        )
        s.offer(
            ResponseObservation(
                WARM + i + 0.1,
                f"e{i}",
                "get-order",
                "GET",
                f"/v1/orders/{oid}",
                "10.6.6.6",
                404,
                20,
                1.0,
                0.8,
            )
        )
    s.drain()
    assert [(a.detector, a.evidence["feature"]) for a in sink.actions] == [
        ("enumeration", "not_found")
    ]


def test_many_users_behind_one_nat_address_and_an_office_prefix_are_not_stuffers() -> None:
    import random

    rng = random.Random(11)
    s, sink = warmed()
    # 20 users behind one address and 30 more in its /24, 10 requests a second for
    # 3 minutes; 12 of them see their token expire (refused, retried three times with
    # the same old token, then refreshed)
    expiring = {u: WARM + rng.uniform(0, 170) for u in rng.sample(range(50), 12)}
    retries = dict.fromkeys(expiring, 3)
    t = WARM
    for i in range(1800):
        t += 0.1
        user = i % 50
        address = "192.0.2.1" if user < 20 else f"192.0.2.{user}"
        expired = user in expiring and t >= expiring[user] and retries[user] > 0
        if expired:
            retries[user] -= 1
        s.offer(
            obs(
                t,
                subject="" if expired else f"office-{user}",
                identity_kind="anonymous" if expired else "jwt",
                credential=f"old-{user}" if expired else f"tok-o{user}",
                allowed=not expired,
                status=401 if expired else 200,
                reason="token_expired" if expired else "allowed",
                route="list",
                path="/v1/orders",
                client_address=address,
            )
        )
    s.drain()
    assert sink.actions == []


def test_caller_window_counts_a_repeated_address_and_endpoint_once() -> None:
    from authz.detect.features import CallerFeatures

    caller = CallerFeatures(60.0, 0.0)
    for i, address in enumerate(["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1", ""]):
        caller.add(_obs_for_caller(float(i), address, "r1" if i < 3 else "r2"))
    assert caller.vector()[1] == 2.0  # endpoints r1, r2
    assert caller.vector()[6] == 3.0  # addresses .1, .2 and ""
    assert caller.roll(61.0) is not None
    caller.add(_obs_for_caller(61.0, "10.0.0.1", "r1"))  # a new window counts them again
    assert caller.vector()[1] == 1.0 and caller.vector()[6] == 1.0


def _obs_for_caller(now: float, address: str, route: str) -> Observation:
    return Observation(
        time=now, decision_id="", route=route, method="GET", shape=route, path="/x",
        client_address=address, identity_kind="jwt", subject="s", credential="c",
        object_ids=(), allowed=True, status=200, reason="allowed", body_bytes=0,
    )  # fmt: skip


@pytest.mark.parametrize(("hops", "client"), [(0, "10.0.0.1"), (1, "198.51.100.7")])
def test_a_feed_only_request_is_given_the_client_the_check_would_read(
    hops: int, client: str
) -> None:
    # a request only the access-log feed saw (a public route): behind trusted proxies
    # its client is read from X-Forwarded-For, as the check reads it
    s, sink = scorer(trusted_hops=hops)
    s.on_response(
        ResponseObservation(
            1.0,
            "",
            "",
            "GET",
            "/.env",
            "10.0.0.1",
            404,
            0,
            1.0,
            0.5,
            forwarded_for="198.51.100.7, 10.0.0.1",
        )
    )
    s.drain()
    assert [a.target for a in sink.actions if a.target_kind == "address"] == [client]


def test_the_loader_copies_trusted_hops_into_detection(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("mode: enforce\nroutes: []\nrate_limits: {trusted_hops: 2}\ndetection: {}\n")
    config = load_policy(path).detection
    assert config is not None and config.trusted_hops == 2
