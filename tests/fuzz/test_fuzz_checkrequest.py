"""Fuzz target 1: the CheckRequest decoder, the engine behind it and the response encoder.

Arbitrary bytes either fail ``CheckRequest.FromString`` with a DecodeError or give
a Request, a Decision (never internal_error), one decision record and a response
whose hand-built wire form parses back to what ``to_check_response`` builds.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st

from authz.model import Decision
from authz.transport.envoy_grpc import CheckRequest
from fuzz import targets
from fuzz.fixtures import world
from tests.fuzz.profiles import DataChooser, budget


@budget(300)
@given(st.binary(max_size=512))
@example(b"")
@example(b"\x0a\x02\x12\x00")  # attributes { request {} }
@example(b"\x0a\x04\x12\x02\x12\x00")  # attributes { request { http {} } }
def test_arbitrary_bytes(data: bytes) -> None:
    targets.check_request_bytes(data)


@budget(80)
@given(st.data())
def test_structured_check_requests(data: st.DataObject) -> None:
    check = targets.structured_check(DataChooser(data))
    wire = check.SerializeToString()
    targets.check_request(CheckRequest.FromString(wire))


@budget(80)
@given(st.data())
def test_structured_requests_with_byte_mutations(data: st.DataObject) -> None:
    """A real CheckRequest with bytes flipped, cut or inserted: decoded or refused."""
    wire = bytearray(targets.structured_check(DataChooser(data)).SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.integers(0, 2))
        i = data.draw(st.integers(0, max(0, len(wire) - 1)))
        if op == 0 and wire:
            wire[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == 1:
            del wire[i:]
        else:
            wire[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    targets.check_request_bytes(bytes(wire))


def test_decode_error_is_the_only_escape() -> None:
    # The oracle is not vacuous: these do not decode, and a valid request does.
    for data in (b"\xff", b"\x0a\x05\x12", b"\x0a\x80"):
        try:
            CheckRequest.FromString(data)
        except DecodeError:
            continue
        raise AssertionError(f"{data!r} decoded")
    w = world()
    token = w.tokens["ES256"]
    check = targets.structured_check(_Fixed(["GET"], "/v1/orders", token))
    decision = targets.check_request(check)
    assert isinstance(decision, Decision)


def test_valid_token_is_allowed_through_the_decoder() -> None:
    from authz.transport.envoy_grpc import build_check_request

    token = world().tokens["RS256"]
    check = build_check_request(
        method="GET",
        path="/v1/orders",
        host="shop.example",
        headers={"authorization": f"Bearer {token}"},
    )
    decision = targets.check_request(CheckRequest.FromString(check.SerializeToString()))
    assert decision.allowed and decision.route == "list-orders"


class _Fixed(targets.Chooser):
    """Always the first choice (a smoke input for the structured generator)."""

    def __init__(self, *_: Any) -> None:
        pass

    def integer(self, lo: int, hi: int) -> int:
        return lo

    def blob(self, n: int) -> bytes:
        return b""

    def text(self, n: int) -> str:
        return ""
