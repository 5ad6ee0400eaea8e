"""The hand-built decision line encoder writes exactly the generic canonical bytes."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.audit.chain import canonical
from authz.audit.encode import DecisionEncoder
from authz.audit.entry import AuditView, decision_entry
from authz.audit.sink import _Rfc3339
from authz.model import ANONYMOUS, Identity, Request
from authz.record import DecisionRecord

from .helpers import VIEW, decision

PREV = "ab" * 32


def generic(record: DecisionRecord, view: AuditView | None, seq: int, prev: str) -> bytes:
    entry = decision_entry(record, view, _Rfc3339())
    entry["seq"] = seq
    entry["prev"] = prev
    return canonical(entry)


def test_the_common_record_takes_the_fast_path_and_matches() -> None:
    encoder = DecisionEncoder(_Rfc3339())
    record = decision(3)
    fast = encoder.fast(record, VIEW, 9, PREV)
    assert fast is not None
    assert fast == generic(record, VIEW, 9, PREV)
    again = encoder.fast(record, VIEW, 10, PREV)  # the identity fragment, cached
    assert again == generic(record, VIEW, 10, PREV)


text = st.text(max_size=12)
claim = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), text,
    st.lists(text, max_size=3), st.booleans(),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    strings=st.lists(text, min_size=9, max_size=9),
    claims=st.dictionaries(st.sampled_from(["tier", "iat", "exp", "x"]), claim, max_size=4),
    when=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    anonymous=st.booleans(),
    length=st.sampled_from(["", "12", "x", "007"]),
)
def test_any_record_encodes_to_the_generic_bytes(
    strings: list[str], claims: dict[str, Any], when: float, anonymous: bool, length: str
) -> None:
    host, path, query, subject, route, reason, request_id, client, trace = strings
    headers = {"authorization": f"Bearer a.{subject}.c", "content-length": length}
    if query:
        headers["content-type"] = query
    request = Request(
        "GET", f"/p?{query}&access_token=s", host=host, headers=headers, request_id=request_id
    )
    identity = (
        ANONYMOUS
        if anonymous
        else Identity("jwt", subject, provider="issuer", issuer=host, claims=claims,
                      scopes=frozenset(strings[:2]))
    )  # fmt: skip
    record = DecisionRecord(
        when, request_id, "d-1", route, "GET", path, identity.kind, identity.subject,
        identity.issuer, "deny", 403, reason, "sha256:1", 0.1, client, "", trace,
        request, identity, "pii",
    )  # fmt: skip
    encoder = DecisionEncoder(_Rfc3339())
    for seq in (0, 1):  # the second time from the identity cache
        assert encoder.line(record, VIEW, seq, PREV) == generic(record, VIEW, seq, PREV)


def test_a_record_without_request_falls_back() -> None:
    record = decision(1)._replace(request=None, time=time.time())
    encoder = DecisionEncoder(_Rfc3339())
    assert encoder.fast(record, VIEW, 0, PREV) is None
    assert encoder.line(record, VIEW, 0, PREV) == generic(record, VIEW, 0, PREV)
