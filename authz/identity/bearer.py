"""Bearer credentials in a request: the token in an ``Authorization``-style header
(:func:`parse_authorization`), whether one is presented at all without parsing it
(:func:`bearer_presented`), and a token in the query (:func:`query_has_access_token`).
What the token says is :mod:`authz.identity.jwt`'s business.
"""

from __future__ import annotations

from typing import NoReturn
from urllib.parse import unquote

from authz import reasons as R
from authz.errors import InvalidToken, MultipleCredentials
from authz.reasons import Reason


def _fail(reason: Reason, detail: str) -> NoReturn:
    raise InvalidToken(detail, reason=reason)


BEARER = frozenset({"bearer"})
BEARER_OR_DPOP = frozenset({"bearer", "dpop"})


def parse_authorization(
    value: str, *, dedicated: bool, schemes: frozenset[str] = BEARER
) -> str | None:
    """The bearer token in a header value, None if it carries no bearer credential.

    Envoy joins repeated headers with ``,``, and a JWT never contains one, so more
    than one comma-separated credential, or extra words after the token, means
    the client sent several: :class:`MultipleCredentials`. ``schemes`` are the
    accepted ones (``DPoP`` too for a provider that takes DPoP). Another scheme
    (``Basic``) abstains when the header is shared (``authorization``); on a
    header dedicated to this provider it is a malformed token.
    """
    if "," in value:
        parts = [p.split() for p in value.split(",") if p.strip()]
        if len(parts) > 1:
            if any(p[0].lower() in schemes for p in parts):
                raise MultipleCredentials("more than one credential in the header")
            _not_bearer(dedicated)
            return None
        words = parts[0] if parts else []
    else:
        words = value.split()  # the common case: one credential, no list to build
    if not words:
        return None
    if words[0].lower() not in schemes:
        _not_bearer(dedicated)
        return None
    if len(words) == 2:
        return words[1]
    if len(words) > 2:
        raise MultipleCredentials("more than one token after the scheme")
    _fail(R.TOKEN_MALFORMED, "a scheme without a token")


def bearer_presented(value: str, *, dedicated: bool, schemes: frozenset[str] = BEARER) -> bool:
    """Whether :func:`parse_authorization` would find a credential in ``value``
    (return a token or raise) rather than abstain; parses nothing."""
    if value.startswith(("Bearer ", "bearer ")) and "," not in value:
        return True  # the common case, without copying the token
    if "," not in value:
        words = value.split(None, 1)
        return bool(words) and (dedicated or words[0].lower() in schemes)
    parts = [p.split(None, 1) for p in value.split(",") if p.strip()]
    if dedicated:
        return bool(parts)
    return any(p[0].lower() in schemes for p in parts)


def _not_bearer(dedicated: bool) -> None:
    # Another scheme in a header that only this provider reads is a bad credential.
    if dedicated:
        _fail(R.TOKEN_MALFORMED, "expected 'Bearer <token>'")


def query_has_access_token(path: str) -> bool:
    """Whether the query of ``path`` has an ``access_token`` parameter (also percent-encoded)."""
    query = path.partition("?")[2].partition("#")[0]
    for pair in query.split("&"):
        name = pair.partition("=")[0]
        if "%" in name:
            # A percent-encoded name (access%5Ftoken) must not slip past the check.
            name = unquote(name)
        if name == "access_token":
            return True
    return False
