"""The one strict JSON reader: request bodies (:mod:`authz.validation.jsonbody`) and
JOSE headers and claims sets (:mod:`authz.identity.jwt`, DPoP proofs) are read with
:data:`DECODER`.

It refuses what a lenient parser would quietly resolve, so that the gateway and the
party behind it (a backend, an issuer) never read different values from one text:

- a duplicate member name in an object (:class:`DuplicateMember`; RFC 7515 4 and
  RFC 7519 4 allow refusing, RFC 8259 4 says names SHOULD be unique, and a
  last-one-wins parser lets two readers disagree);
- ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON), and numbers that overflow to
  infinity;
- control characters inside strings (``strict=True``).

Everything raised is a :class:`ValueError`; callers map it to their reason.
"""

from __future__ import annotations

import json
import math
from typing import Any


class DuplicateMember(ValueError):
    """An object names a member twice; ``key`` is the name."""

    def __init__(self, key: str) -> None:
        super().__init__("duplicate member name")
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # only then is the list walked
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateMember(key)
            seen.add(key)
    return obj


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


#: The decoder (``decode`` / ``raw_decode``); raises ValueError (DuplicateMember for
#: a repeated name) or RecursionError.
DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, strict=True
)


def loads(text: str | bytes) -> Any:
    """The one JSON value of ``text`` (UTF-8 when bytes), strictly; raises ValueError."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError
    return DECODER.decode(text)
