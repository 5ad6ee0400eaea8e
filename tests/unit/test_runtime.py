"""The runtime registry: start order, reverse close order, idempotence, failure isolation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from authz.runtime import Runtime, Runtimes, Together


class Probe:
    """A runtime that records its calls in a shared journal."""

    def __init__(
        self, name: str, journal: list[str], *, fail_start: int = 0, fail_close: bool = False
    ) -> None:
        self.name = name
        self.journal = journal
        self.fail_start = fail_start  # this many starts raise
        self.fail_close = fail_close

    async def start(self) -> None:
        self.journal.append(f"start {self.name}")
        if self.fail_start:
            self.fail_start -= 1
            raise RuntimeError(f"{self.name} cannot start")

    async def aclose(self) -> None:
        self.journal.append(f"close {self.name}")
        if self.fail_close:
            raise RuntimeError(f"{self.name} cannot close")


def test_a_probe_is_a_runtime() -> None:
    assert isinstance(Probe("a", []), Runtime)


async def test_starts_in_order_and_closes_in_reverse() -> None:
    journal: list[str] = []
    reg = Runtimes()
    for name in "abc":
        reg.add(Probe(name, journal))
    await reg.start()
    await reg.aclose()
    assert journal == ["start a", "start b", "start c", "close c", "close b", "close a"]


async def test_idempotent_add_start_and_close() -> None:
    journal: list[str] = []
    reg = Runtimes()
    a = Probe("a", journal)
    reg.add(a)
    reg.add(a)
    await reg.start()
    reg.add(a)  # registered again by the next policy: already running
    await reg.start()
    assert journal == ["start a"]
    await reg.aclose()
    await reg.aclose()
    assert journal == ["start a", "close a"]


async def test_later_additions_start_on_the_next_start_and_close_first() -> None:
    journal: list[str] = []
    reg = Runtimes()
    reg.add(Probe("a", journal))
    await reg.start()
    reg.add(Probe("b", journal))  # a reloaded policy's new store
    assert [getattr(r, "name", "") for r in reg.pending] == ["b"]
    await reg.start()
    await reg.aclose()
    assert journal == ["start a", "start b", "close b", "close a"]


async def test_a_failing_close_is_logged_and_the_others_still_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal: list[str] = []
    reg = Runtimes()
    reg.add(Probe("a", journal))
    reg.add(Probe("b", journal, fail_close=True))
    reg.add(Probe("c", journal))
    await reg.start()
    with caplog.at_level(logging.ERROR, logger="authz.runtime"):
        await reg.aclose()
    assert journal[-3:] == ["close c", "close b", "close a"]
    assert "closing b failed" in caplog.text


async def test_a_failing_start_propagates_is_retried_and_is_closed() -> None:
    journal: list[str] = []
    reg = Runtimes()
    reg.add(Probe("a", journal))
    reg.add(Probe("b", journal, fail_start=1))
    reg.add(Probe("c", journal))
    with pytest.raises(RuntimeError, match="b cannot start"):
        await reg.start()
    assert journal == ["start a", "start b"]  # c was not started after b failed
    await reg.start()  # b again, then c
    assert journal == ["start a", "start b", "start b", "start c"]
    await reg.aclose()
    assert journal[-3:] == ["close c", "close b", "close a"]


async def test_a_half_started_runtime_is_closed_even_if_never_retried() -> None:
    journal: list[str] = []
    reg = Runtimes()
    reg.add(Probe("a", journal, fail_start=1))
    with pytest.raises(RuntimeError):
        await reg.start()
    await reg.aclose()
    assert journal == ["start a", "close a"]


async def test_abandon_forgets_what_was_never_started() -> None:
    journal: list[str] = []
    reg = Runtimes()
    a, b = Probe("a", journal), Probe("b", journal)
    reg.add(a)
    await reg.start()
    reg.add(b)  # a build that then failed
    assert reg.abandon() == (b,)
    await reg.start()
    await reg.aclose()
    assert journal == ["start a", "close a"]  # b: neither started nor closed
    assert b not in reg


async def test_together_starts_members_concurrently() -> None:
    gate = asyncio.Event()
    order: list[str] = []

    class Waits:
        name = "waits"

        async def start(self) -> None:
            await gate.wait()  # only returns once the other member has started
            order.append("waits")

        async def aclose(self) -> None:
            order.append("close waits")

    class Opens:
        name = "opens"

        async def start(self) -> None:
            order.append("opens")
            gate.set()

        async def aclose(self) -> None:
            raise RuntimeError("broken")

    group = Together([Waits(), Opens()])
    await asyncio.wait_for(group.start(), 5)
    assert order == ["opens", "waits"]
    await group.aclose()  # one member failing does not stop the other
    assert order[-1] == "close waits"
