"""The enforcement table and targets: TTLs, bounds, prefixes (IPv4 and IPv6), and
what a detector's action or an operator's change becomes."""

from __future__ import annotations

import pytest

from authz.detect.events import Action, credential_digest
from authz.policy.enforcement_config import EnforcementConfig
from authz.respond.enforcer import Enforcer
from authz.respond.table import Entry, Table
from authz.respond.targets import TargetError, address_and_prefix, normalize, token_id
from authz.telemetry.metrics import MemoryMetrics


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(target: str, *, kind: str = "address", response: str = "block", ttl: float = 60,
          now: float = 1_800_000_000.0, monitor: bool = False) -> Entry:  # fmt: skip
    return Entry(response, kind, target, now, now + ttl, "operator", "tester", monitor=monitor)


def test_prefixes_of_addresses() -> None:
    assert address_and_prefix("10.1.2.3") == ("10.1.2.3", "10.1.2.0/24")
    assert address_and_prefix("2001:db8:1:2:aaaa::7") == (
        "2001:db8:1:2:aaaa::7",
        "2001:db8:1:2::/64",
    )
    assert address_and_prefix("2001:DB8:1:2:0:0:0:7") == ("2001:db8:1:2::7", "2001:db8:1:2::/64")
    assert address_and_prefix("::ffff:10.1.2.3") == ("10.1.2.3", "10.1.2.0/24")
    assert address_and_prefix("[2001:db8::1]") == ("2001:db8::1", "2001:db8::/64")
    assert address_and_prefix("not-an-address") == ("", "")
    assert address_and_prefix("") == ("", "")


def test_normalize_targets() -> None:
    assert normalize("address", " 2001:DB8::0:1 ") == "2001:db8::1"
    assert normalize("address", "::ffff:192.0.2.9") == "192.0.2.9"
    assert normalize("prefix", "10.1.2.77/24") == "10.1.2.0/24"
    assert normalize("prefix", "2001:db8:1:2:ff::/64") == "2001:db8:1:2::/64"
    assert normalize("subject", "alice") == "alice"
    with pytest.raises(TargetError, match="not an IP address"):
        normalize("address", "10.1.2")
    with pytest.raises(TargetError, match=r"/24 \(IPv4\) or /64 \(IPv6\)"):
        normalize("prefix", "10.1.0.0/16")
    with pytest.raises(TargetError, match=r"/24 \(IPv4\) or /64 \(IPv6\)"):
        normalize("prefix", "2001:db8::/48")
    with pytest.raises(TargetError, match="unknown target kind"):
        normalize("planet", "earth")
    with pytest.raises(TargetError, match="empty"):
        normalize("subject", "  ")
    with pytest.raises(TargetError, match="control characters"):
        normalize("subject", "a\nb")


def test_token_id_is_jti_or_digest_of_header_payload() -> None:
    import base64
    import json

    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    head = b64({"alg": "ES256"})
    with_jti = f"{head}.{b64({'sub': 'a', 'jti': 'j-1'})}.sig"
    without = f"{head}.{b64({'sub': 'a'})}.sig"
    assert token_id(with_jti) == "j-1"
    assert token_id(without) == credential_digest(without.rsplit(".", 1)[0])
    assert token_id(without.replace(".sig", ".other")) == token_id(without)  # not the signature
    with pytest.raises(TargetError, match="not a JWT"):
        token_id("abc")


def test_ttl_expiry_and_sweep() -> None:
    clock = Clock()
    table = Table(10, clock=clock)
    table.put(entry("10.0.0.1", ttl=5))
    table.put(entry("10.0.0.2", ttl=50))
    assert set(table.index["address"]) == {"10.0.0.1", "10.0.0.2"}
    clock.now += 10
    assert table.sweep() == 1
    assert set(table.index["address"]) == {"10.0.0.2"}
    assert table.put(entry("10.0.0.3", ttl=5, now=clock.now - 10)) is None  # expired: not added
    assert len(table) == 1


def test_bounded_oldest_evicted_and_counted() -> None:
    clock = Clock()
    metrics = MemoryMetrics()
    table = Table(3, clock=clock, metrics=metrics)
    for i in range(5):
        table.put(entry(f"10.0.0.{i}", ttl=100 + i))
    assert len(table) == 3
    assert set(table.index["address"]) == {"10.0.0.2", "10.0.0.3", "10.0.0.4"}
    family = metrics.families["authz_enforcement_evicted_total"]
    assert family.series[("block",)].value == 2  # type: ignore[attr-defined]
    # when full, expired entries go before live ones
    clock.now += 102.5  # 10.0.0.2 expired
    table.put(entry("10.0.0.9", ttl=100, now=clock.now))
    assert set(table.index["address"]) == {"10.0.0.3", "10.0.0.4", "10.0.0.9"}
    assert family.series[("block",)].value == 2  # type: ignore[attr-defined]


def test_a_million_fresh_entries_stay_within_the_bound() -> None:
    table = Table(1000, clock=Clock())
    for i in range(20_000):
        table.put(entry(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", ttl=1e6))
    assert len(table) == 1000
    assert len(table.index["address"]) == 1000
    assert len(table._expiries) <= 4 * 1024 + 1


def test_monitor_entries_are_listed_not_indexed() -> None:
    table = Table(10, clock=Clock())
    table.put(entry("10.0.0.1", monitor=True))
    assert len(table) == 1 and not table.index["address"]
    table.remove(entry("10.0.0.1").key)
    assert len(table) == 0


def test_actions_become_entries() -> None:
    clock = Clock()
    enforcer = Enforcer(EnforcementConfig(), clock=clock)

    def act(**kw: object) -> Action:
        base: dict[str, object] = dict(
            time=clock.now, detector="honeypot", response="block", target_kind="address",
            target="10.9.8.7", ttl=600.0, reason="caller_blocked", evidence={"path": "/.env"},
        )  # fmt: skip
        base.update(kw)
        return Action(**base)  # type: ignore[arg-type]

    enforcer.apply(act())
    [e] = enforcer.entries()
    assert (e.response, e.target_kind, e.target, e.source, e.by) == (
        "block", "address", "10.9.8.7", "detector", "honeypot",
    )  # fmt: skip
    assert e.expires == clock.now + 600 and dict(e.evidence) == {"path": "/.env"}
    assert e.describe(clock.now) == "block address 10.9.8.7 by detector honeypot, 600s left"
    # a shorter action does not shorten it; a monitor one does not replace it
    enforcer.apply(act(ttl=10.0))
    enforcer.apply(act(ttl=6000.0, monitor=True))
    assert enforcer.entries()[0].expires == clock.now + 600
    assert [r.outcome for r in enforcer.actions()] == ["kept", "kept", "enforced"]
    # monitor: listed, not enforced
    enforcer.apply(act(target="10.9.8.8", monitor=True))
    assert "10.9.8.8" not in enforcer.table.index["address"]
    assert any(e.monitor and e.target == "10.9.8.8" for e in enforcer.entries())
    # log only, and a bad target: recorded, nothing in force
    enforcer.apply(act(response="log", target="10.9.8.9"))
    enforcer.apply(act(target="10.9.8"))
    enforcer.apply(act(response="revoke", target_kind="address"))
    outcomes = [r.outcome for r in enforcer.actions(limit=3)]
    assert outcomes == ["rejected", "rejected", "logged"]
    assert len(enforcer.entries()) == 2


def test_operator_add_and_lift() -> None:
    clock = Clock()
    enforcer = Enforcer(EnforcementConfig(block_ttl=900, revoke_ttl=3600), clock=clock)
    block = enforcer.add("block", "prefix", "10.1.2.99/24", by="token:abcd")
    assert block.target == "10.1.2.0/24" and block.expires == clock.now + 900
    revoke = enforcer.add("revoke", "subject", "mallory", by="token:abcd", note="leaked")
    assert revoke.expires == clock.now + 3600 and revoke.note == "leaked"
    assert enforcer.identity_active and enforcer.request_active
    assert enforcer.lift("block", "prefix", "10.1.2.0/24") == block
    assert enforcer.lift("block", "prefix", "10.1.2.0/24") is None
    assert not enforcer.request_active
    with pytest.raises(TargetError, match="a revocation names a credential"):
        enforcer.add("revoke", "address", "10.0.0.1", by="x")
    with pytest.raises(TargetError, match="unknown response"):
        enforcer.add("ban", "address", "10.0.0.1", by="x")
    with pytest.raises(TargetError, match="not a TTL"):
        enforcer.add("block", "address", "10.0.0.1", -5, by="x")
    with pytest.raises(TargetError, match="not a TTL"):
        enforcer.add("block", "address", "10.0.0.1", float("nan"), by="x")
    with pytest.raises(TargetError, match="a note is at most 500"):
        enforcer.add("block", "address", "10.0.0.1", by="x", note="x" * 501)
    with pytest.raises(TargetError, match="unknown response"):
        enforcer.lift("ban", "address", "10.0.0.1")
