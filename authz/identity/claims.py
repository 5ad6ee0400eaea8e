"""What a verified JWT must be to pass as an access token: its JOSE ``typ`` and the
JSON types of its registered claims. Pure functions; every failure is an
:class:`~authz.errors.InvalidToken` with a stable reason, never a coercion.

``typ`` (RFC 9068 2.1, RFC 8725 3.11): values compare case-insensitively and
without the ``application/`` prefix (RFC 7515 4.1.9). A provider lists the values it
accepts (``typ: [at+jwt]`` is RFC 9068 4 to the letter); by default a token with no
``typ``, ``JWT`` or ``at+jwt`` passes, because most issuers still sign access tokens
as ``JWT`` and refusing them would break every existing policy. Whatever the list,
tokens that say they are something else are refused as ``token_not_access_token``:
an OpenID Connect ID token (``nonce``, ``at_hash``, ``c_hash`` or ``s_hash`` claims),
a logout or other security event token (``events``, RFC 8417 / OIDC back-channel
logout), and the payload ``typ`` / ``token_use`` markers issuers put on ID and
refresh tokens (Keycloak ``ID``, ``Refresh``, ``Offline``, ``Logout``; Cognito ``id``).
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

from authz import reasons as R
from authz.errors import InvalidToken
from authz.reasons import Reason

#: ``typ`` accepted when the provider lists none: absent, JWT, at+jwt.
DEFAULT_TYP: frozenset[str | None] = frozenset({None, "jwt", "at+jwt"})
#: Claims only an OpenID Connect ID token carries (OIDC Core 2, 3.3.2.11).
ID_TOKEN_CLAIMS = frozenset({"nonce", "at_hash", "c_hash", "s_hash"})
#: Payload markers (lower case) of tokens that are not access tokens.
NOT_ACCESS_MARKERS = frozenset({"id", "refresh", "offline", "logout", "id_token"})


def _fail(reason: Reason, detail: str) -> NoReturn:
    raise InvalidToken(detail, reason=reason)


def normalise_typ(value: str) -> str:
    """``application/AT+JWT`` -> ``at+jwt`` (RFC 7515 4.1.9)."""
    value = value.strip().lower()
    return value[12:] if value.startswith("application/") else value


def accepted_typ(configured: tuple[str, ...] | None) -> frozenset[str | None]:
    """The set :func:`check_typ` compares with (None stands for an absent ``typ``)."""
    if configured is None:
        return DEFAULT_TYP
    return frozenset(normalise_typ(t) for t in configured)


def check_typ(header: dict[str, Any], accepted: frozenset[str | None]) -> None:
    """Refuse a JOSE header whose ``typ`` is not accepted."""
    typ = header.get("typ")
    if typ is None:
        if None not in accepted:
            _fail(R.TOKEN_NOT_ACCESS_TOKEN, "typ missing (the provider requires one)")
        return
    if not isinstance(typ, str):
        _fail(R.TOKEN_MALFORMED, "typ is not a string")
    if normalise_typ(typ) not in accepted:
        _fail(R.TOKEN_NOT_ACCESS_TOKEN, f"typ {typ[:30]!r} is not an accepted access token type")


def check_access_payload(payload: dict[str, Any]) -> None:
    """Refuse claims sets that say they are an ID, logout or refresh token."""
    if "events" in payload:
        _fail(R.TOKEN_NOT_ACCESS_TOKEN, "a security event (logout) token, not an access token")
    if not ID_TOKEN_CLAIMS.isdisjoint(payload):
        _fail(R.TOKEN_NOT_ACCESS_TOKEN, "an ID token, not an access token")
    for name in ("typ", "token_use"):
        marker = payload.get(name)
        if isinstance(marker, str) and marker.lower() in NOT_ACCESS_MARKERS:
            _fail(R.TOKEN_NOT_ACCESS_TOKEN, f"{name} {marker[:20]!r}: not an access token")


def number(payload: dict[str, Any], claim: str) -> float | None:
    """A NumericDate claim (RFC 7519 2): a JSON number, never a bool or a string."""
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(R.TOKEN_CLAIM_TYPE, f"claim {claim} is not a number")
    try:
        result = float(value)
    except OverflowError:
        _fail(R.TOKEN_MALFORMED, f"claim {claim} is out of range")
    if not math.isfinite(result):
        _fail(R.TOKEN_MALFORMED, f"claim {claim} is out of range")
    return result


def string(payload: dict[str, Any], claim: str) -> str | None:
    """A StringOrURI claim (``iss``, ``sub``, ``jti``): a string when present."""
    value = payload.get(claim)
    if value is not None and not isinstance(value, str):
        _fail(R.TOKEN_CLAIM_TYPE, f"claim {claim} is not a string")
    return value


def audiences(payload: dict[str, Any]) -> tuple[str, ...]:
    """``aud``: a string or an array of strings (RFC 7519 4.1.3); () when absent."""
    aud = payload.get("aud")
    if aud is None:
        return ()
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    _fail(R.TOKEN_CLAIM_TYPE, "claim aud is neither a string nor an array of strings")


def scopes(payload: dict[str, Any], claim: str) -> frozenset[str]:
    """``scope`` is a space-delimited string (RFC 8693 4.2, RFC 9068 2.2.3); ``scp``
    an array of strings. The other shape is refused, not converted."""
    value = payload.get(claim)
    if value is None:
        return frozenset()
    if claim == "scp":
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return frozenset(s for s in value if s)
        _fail(R.TOKEN_CLAIM_TYPE, "claim scp is not an array of strings")
    if isinstance(value, str):
        return frozenset(value.split(" ")) - {""}
    _fail(R.TOKEN_CLAIM_TYPE, f"claim {claim} is not a space-delimited string")
