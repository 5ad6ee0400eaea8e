"""A hand-built canonical encoder for the fixed shape of a decision line.

:func:`authz.audit.chain.canonical` of :func:`~authz.audit.entry.decision_entry` (a
dict of 25 keys, sorted by the C JSON encoder) cost ~16 µs a record on the bench
machine, more than the decision itself. The shape never changes, so the keys are
written once, in sorted order, into a template, and a record only fills in its
values:

- the values are checked in one go (joined: printable ASCII, no ``"`` or ``\\``):
  then they need no escaping and go into the template as they are. Otherwise each
  is escaped by one call of the C ``encode_basestring_ascii`` over all of them joined
  by ``"`` (escaping is per character, so the result splits back at ``\\"``); a
  ``"`` inside a value, rare, takes the generic path;
- the identity fragment (type, provider, issuer, subject, scopes, SPIFFE ID, claims
  read, token digest, iat, exp) is cached per identity object and credential (a
  cached token yields the same ``Identity`` each time); the cache is bounded.

Anything outside the common shape (a value that is not a str, an int or a finite
float where one is expected, a quote) falls back to ``canonical(decision_entry(...))``,
so the bytes are the same either way: ``tests/audit/test_encode.py`` compares them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from authz.audit.chain import canonical
from authz.audit.entry import AuditView, decision_entry, redact_query
from authz.record import DecisionRecord

_ESCAPE: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
#: the encoded identity, token_digest, token_exp, token_iat values
Fragment = tuple[str, str, str, str]
#: identities whose fragments are kept (then the cache starts again)
MAX_IDENTITIES = 4096


class DecisionEncoder:
    """(record, view, seq, prev) -> the canonical line; one per writer (its thread)."""

    def __init__(self, at: Callable[[float], str]) -> None:
        self._at = at
        self._second = -1
        self._prefix = ""
        #: id(identity) -> (identity, credential, view, fragment)
        self._identities: dict[int, tuple[Any, str, Any, Fragment]] = {}

    def line(self, record: DecisionRecord, view: AuditView | None, seq: int, prev: str) -> bytes:
        return self.fast(record, view, seq, prev) or self.generic(record, view, seq, prev)

    def generic(self, record: DecisionRecord, view: AuditView | None, seq: int, prev: str) -> bytes:
        """``canonical(decision_entry(...))``: the form :meth:`fast` reproduces."""
        entry = decision_entry(record, view, self._at)
        entry["seq"] = seq
        entry["prev"] = prev
        return canonical(entry)

    def _identity(
        self, record: DecisionRecord, view: AuditView | None, headers: Any
    ) -> Fragment | None:
        """The encoded ``identity``, ``token_digest``, ``token_exp`` and ``token_iat``."""
        identity = record.identity
        credential = _credential(identity, view, headers) if view is not None else ""
        cached = self._identities.get(id(identity))
        if (
            cached is not None
            and cached[0] is identity
            and cached[1] == credential
            and cached[2] is view
            and identity is not None
        ):
            # the record's own identity_type/subject/issuer are the identity's
            return cached[3]
        try:
            entry = decision_entry(record._replace(request=_Headers(headers)), view, self._at)
        except (TypeError, ValueError, AttributeError):
            return None
        who = entry["identity"]
        tail = (
            canonical(who).decode("ascii"),
            canonical(entry["token_digest"]).decode("ascii"),
            canonical(entry["token_exp"]).decode("ascii"),
            canonical(entry["token_iat"]).decode("ascii"),
        )
        fragment = tail
        consistent = (
            identity is not None
            and who["identity_type"] == identity.kind
            and who["subject"] == identity.subject
            and who["issuer"] == identity.issuer
        )
        if consistent:
            if len(self._identities) >= MAX_IDENTITIES:
                self._identities.clear()
            self._identities[id(identity)] = (identity, credential, view, fragment)
        return fragment

    def fast(
        self, record: DecisionRecord, view: AuditView | None, seq: int, prev: str
    ) -> bytes | None:
        (time_, request_id, decision_id, route, method, path, identity_type, subject, issuer,
         decision, status, reason, version, _, client, _, trace_id, request, identity,
         data_class) = record  # fmt: skip
        if request is None or type(time_) is not float or type(status) is not int:
            return None
        if identity is not None and (
            identity.kind != identity_type
            or identity.subject != subject
            or identity.issuer != issuer
        ):
            return None
        headers: Mapping[str, str] = request.headers
        target = request.path
        query = redact_query(target.split("?", 1)[1].split("#", 1)[0]) if "?" in target else ""
        content_type = headers.get("content-type", "")[:128]
        body = request.body
        length = headers.get("content-length", "")
        content_length = len(body) if body else int(length) if length.isdigit() else 0
        cached = self._identities.get(id(identity))
        if (
            cached is not None
            and cached[0] is identity
            and cached[2] is view
            and (view is None or cached[1] == _credential(identity, view, headers))
        ):
            who: Fragment | None = cached[3]
        else:
            who = self._identity(record, view, headers)
        if who is None or not math.isfinite(time_):
            return None
        identity_json, digest, exp, iat = who
        second = int(time_)
        if second != self._second:
            self._second = second
            self._prefix = self._at(float(second))[:-4]
        at = self._prefix + _MILLIS[min(999, int((time_ - second) * 1000))]
        values = (at, client, content_type, data_class, decision, decision_id, request.host,
                  method, path, version, query, reason, request_id, route, trace_id)  # fmt: skip
        try:
            joined = "".join(values)  # all str, else a TypeError: none is written unquoted
        except TypeError:
            return None
        host = request.host
        if not (joined.isascii() and joined.isprintable()) or '"' in joined or "\\" in joined:
            # something to escape: each value, by one C call over all of them
            joined = '"'.join(values)
            if joined.count('"') != len(values) - 1:
                return None  # a quote inside a value: the generic path
            (at, client, content_type, data_class, decision, decision_id, host, method, path,
             version, query, reason, request_id, route, trace_id) = _ESCAPE(joined)[1:-1].split(
                '\\"'
            )  # fmt: skip
        return (
            f'{{"at":"{at}","client_address":"{client}","content_length":{content_length},'
            f'"content_type":"{content_type}","data_class":"{data_class}",'
            f'"decision":"{decision}","decision_id":"{decision_id}","host":"{host}",'
            f'"identity":{identity_json},"kind":"decision","method":"{method}",'
            f'"path":"{path}","policy_version":"{version}","prev":"{prev}",'
            f'"query":"{query}","reason":"{reason}","request_id":"{request_id}",'
            f'"route":"{route}","seq":{seq},"status":{status},"time":{float.__repr__(time_)},'
            f'"token_digest":{digest},"token_exp":{exp},"token_iat":{iat},'
            f'"trace_id":"{trace_id}"}}'
        ).encode("ascii")

    def _time(self, when: float) -> str:
        """RFC 3339 with milliseconds, as :class:`authz.audit.sink._Rfc3339` writes it
        (the date part once a second, the milliseconds from a table)."""
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = self._at(float(second))[:-4]
        return self._prefix + _MILLIS[min(999, int((when - second) * 1000))]


_MILLIS = tuple(f"{m:03d}Z" for m in range(1000))


def _credential(identity: Any, view: AuditView, headers: Mapping[str, str]) -> str:
    """The credential the identity was proven with (its provider's header), or ""."""
    if identity is None or identity.kind == "anonymous":
        return ""
    header = view.credential_headers.get(identity.provider, _NO_HEADER)[0]
    return (headers.get(header) or "") if header else ""


_NO_HEADER = ("", False)


class _Headers:
    """A stand-in request for :func:`decision_entry` when only the identity part is
    wanted: the headers, nothing else."""

    __slots__ = ("headers",)
    host = ""
    path = ""
    body = b""

    def __init__(self, headers: Any) -> None:
        self.headers = headers
