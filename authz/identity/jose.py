"""JOSE compact segments read strictly: canonical base64url (:func:`b64decode`) and
a JSON object through :mod:`authz.strictjson` (:func:`json_object`): a duplicate
member name is ``token_duplicate_member``, anything else unreadable
``token_malformed``. Used for tokens; pure functions.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, NoReturn

from authz import reasons as R
from authz import strictjson
from authz.errors import InvalidToken
from authz.reasons import Reason

_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64_INDEX = {c: i for i, c in enumerate(_B64URL_ALPHABET)}


def _fail(reason: Reason, detail: str) -> NoReturn:
    raise InvalidToken(detail, reason=reason)


def b64decode(segment: str, name: str) -> bytes:
    rem = len(segment) % 4
    if rem == 1:
        _fail(R.TOKEN_MALFORMED, f"bad base64url length in {name}")
    if rem:
        # Unused low bits of the last character must be zero, else several strings
        # would decode to the same bytes (a cache key and a token id would differ).
        mask = 0x0F if rem == 2 else 0x03
        if _B64_INDEX[segment[-1]] & mask:
            _fail(R.TOKEN_MALFORMED, f"non-canonical base64url in {name}")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        _fail(R.TOKEN_MALFORMED, f"bad base64url in {name}")


def json_object(segment: str, name: str) -> dict[str, Any]:
    raw = b64decode(segment, name)
    try:
        value = strictjson.loads(raw)
    except strictjson.DuplicateMember:
        _fail(R.TOKEN_DUPLICATE_MEMBER, f"{name} names a member twice")
    except (ValueError, RecursionError):
        _fail(R.TOKEN_MALFORMED, f"{name} is not JSON")
    if not isinstance(value, dict):
        _fail(R.TOKEN_MALFORMED, f"{name} is not a JSON object")
    if b"\\u" in raw and _LONE_SURROGATE.search(raw) and not _encodable(value):
        # JSON may escape a lone UTF-16 surrogate ("\ud800"); no UTF-8 text holds one,
        # so a claim with it could not be put in a header, a log line or a sketch.
        _fail(R.TOKEN_MALFORMED, f"{name} holds a lone surrogate")
    return value


#: A \u escape of a UTF-16 surrogate (a pair is fine, and json joins it): the cheap
#: pre-check before the whole value is walked.
_LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodable(value: Any) -> bool:
    """True if every string in ``value`` (keys included) is valid Unicode text."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
