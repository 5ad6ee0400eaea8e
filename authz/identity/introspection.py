"""Opaque access tokens checked at an RFC 7662 introspection endpoint (provider
type ``introspection``).

A ``Bearer`` token is looked up by its SHA-256 in a bounded LRU cache; a hit costs
a hash and a dict lookup and is answered without a coroutine. A miss POSTs
``token=...&token_type_hint=access_token`` with the client's credentials (HTTP
Basic, RFC 6749 2.3.1; the secret is read from a file once, at start) in a worker
thread, like JWKS fetching (:mod:`authz.identity.jwks_fetch`), so the event loop is
never blocked; concurrent misses for one token share one call. The answer is read
with the strict JSON reader and the claim types of :mod:`authz.identity.claims`:
``active`` must be ``true`` (else ``token_inactive``), ``exp`` in the future, a
refresh token (``token_type``) is ``token_not_access_token``, and ``iss`` / ``aud``
match when the provider names them. An active answer is cached until the earliest
of ``exp`` and ``cache_ttl``; an inactive one for ``negative_ttl``. A failed call
(down, timeout, HTTP error, not JSON) is ``introspection_unavailable`` (503) and is
not cached: fail closed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlencode

from authz import reasons as R
from authz import strictjson
from authz.errors import IntrospectionUnavailable, InvalidToken, MultipleCredentials
from authz.identity import claims as C
from authz.identity.base import WAIT, Answer, Clock
from authz.identity.bearer import bearer_presented, parse_authorization, query_has_access_token
from authz.model import Identity, Request
from authz.policy.config import IntrospectionProviderConfig

MAX_TOKEN_LENGTH = 16 * 1024
MAX_RESPONSE_BYTES = 64 * 1024
#: POSTs a form body to a URL with headers; returns (status, body); raises OSError.
Poster = Callable[[str, bytes, dict[str, str], float], Awaitable[tuple[int, bytes]]]


def _post_blocking(
    url: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, bytes]:
    if not url.lower().startswith(("http://", "https://")):
        raise OSError(f"refusing to POST to non-http(s) URL {url!r}")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(MAX_RESPONSE_BYTES + 1)
            if time.monotonic() > deadline:
                raise OSError("introspection answer not received in time")
            return int(response.status), data
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code), b""
    except (ValueError, urllib.error.URLError) as exc:
        raise OSError(str(exc)) from None


async def post_form(
    url: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, bytes]:
    """The default :data:`Poster`: urllib in a worker thread, bounded by ``timeout``."""
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(_post_blocking, url, body, headers, timeout), timeout
        )
    except TimeoutError:
        raise OSError("introspection timed out") from None


class _Answer:
    __slots__ = ("identity", "until")

    def __init__(self, identity: Identity | None, until: float) -> None:
        self.identity = identity  # None: inactive
        self.until = until


class IntrospectionProvider:
    """Verifies opaque ``Bearer`` tokens with RFC 7662; implements ``IdentityProvider``."""

    kind = "introspection"
    connection_credential = False

    def __init__(
        self,
        config: IntrospectionProviderConfig,
        *,
        clock: Clock = time.time,
        poster: Poster | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._clock = clock
        self._post = poster or post_form
        self._header = config.header.lower()
        self._dedicated = self._header != "authorization"
        self._carrier = "header:" + self._header
        self._cache: OrderedDict[bytes, _Answer] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[_Answer]] = {}
        self._authorization = ""
        self.calls = 0

    async def start(self) -> None:
        secret = Path(self.config.client_secret_file).read_text("utf-8").strip()
        pair = f"{quote(self.config.client_id, safe='')}:{quote(secret, safe='')}"
        self._authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")

    def ready(self) -> bool:
        return bool(self._authorization)

    async def aclose(self) -> None:
        return None

    @property
    def cached(self) -> int:
        return len(self._cache)

    def presented(self, request: Request) -> str | None:
        value = request.headers.get(self._header)
        if value is not None and bearer_presented(value, dedicated=self._dedicated):
            return self._carrier
        if "?" in request.path and query_has_access_token(request.path):
            return "query:access_token"
        return None

    def _token(self, request: Request) -> str | None:
        value = request.headers.get(self._header)
        if value is None:
            return None
        token = parse_authorization(value, dedicated=self._dedicated)
        if token is None:
            return None
        if "?" in request.path and query_has_access_token(request.path):
            raise MultipleCredentials("token in both the header and the query")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long", reason=R.TOKEN_MALFORMED)
        return token

    def authenticate_now(self, request: Request) -> Answer:
        token = self._token(request)
        if token is None:
            return None
        answer = self._cache.get(hashlib.sha256(token.encode()).digest())
        if answer is None or self._clock() >= answer.until:
            return WAIT
        return self._result(answer)

    async def authenticate(self, request: Request) -> Identity | None:
        token = self._token(request)
        if token is None:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        answer = self._cache.get(digest)
        if answer is not None and self._clock() < answer.until:
            self._cache.move_to_end(digest)
            return self._result(answer)
        pending = self._inflight.get(digest)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[digest] = pending
            try:
                answer = await self._introspect(token)
                self._store(digest, answer)
                pending.set_result(answer)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved: waiters get it, nobody logs it twice
                raise
            finally:
                del self._inflight[digest]
        else:
            answer = await asyncio.shield(pending)
        return self._result(answer)

    def _result(self, answer: _Answer) -> Identity:
        if answer.identity is None:
            raise InvalidToken("the token is not active", reason=R.TOKEN_INACTIVE)
        return answer.identity

    def _store(self, digest: bytes, answer: _Answer) -> None:
        if self.config.cache_size <= 0:
            return
        self._cache[digest] = answer
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    async def _introspect(self, token: str) -> _Answer:
        config = self.config
        body = urlencode({"token": token, "token_type_hint": "access_token"}).encode()
        headers = {
            "Authorization": self._authorization,
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        self.calls += 1
        try:
            status, data = await self._post(config.endpoint, body, headers, config.timeout)
        except OSError as exc:
            raise IntrospectionUnavailable(f"introspection: {exc}") from None
        if status != 200 or len(data) > MAX_RESPONSE_BYTES:
            raise IntrospectionUnavailable(f"introspection: HTTP {status}")
        try:
            doc = strictjson.loads(data)
        except (ValueError, RecursionError):
            raise IntrospectionUnavailable("introspection: not a JSON answer") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("active"), bool):
            raise IntrospectionUnavailable("introspection: no boolean active member")
        now = self._clock()
        if doc["active"] is not True:
            return _Answer(None, now + config.negative_ttl)
        return _Answer(*self._identity(doc, now))

    def _identity(self, doc: dict[str, Any], now: float) -> tuple[Identity, float]:
        config = self.config
        token_type = doc.get("token_type")
        if isinstance(token_type, str) and "refresh" in token_type.lower():
            raise InvalidToken("a refresh token", reason=R.TOKEN_NOT_ACCESS_TOKEN)
        exp = C.number(doc, "exp")
        if exp is not None and now >= exp:
            raise InvalidToken("token expired", reason=R.TOKEN_EXPIRED)
        nbf = C.number(doc, "nbf")
        if nbf is not None and nbf > now:
            raise InvalidToken("nbf in the future", reason=R.TOKEN_NOT_YET_VALID)
        C.number(doc, "iat")
        iss = C.string(doc, "iss")
        if config.issuer is not None and iss != config.issuer:
            raise InvalidToken("issuer does not match", reason=R.TOKEN_WRONG_ISSUER)
        audiences = C.audiences(doc)
        if config.audiences and set(config.audiences).isdisjoint(audiences):
            raise InvalidToken("audience not accepted", reason=R.TOKEN_WRONG_AUDIENCE)
        sub = C.string(doc, "sub") or C.string(doc, "client_id")
        if not sub:
            raise InvalidToken("no sub or client_id", reason=R.TOKEN_MISSING_SUBJECT)
        identity = Identity(
            kind="introspection",
            subject=sub,
            provider=config.name,
            issuer=iss or "",
            scopes=C.scopes(doc, config.scope_claim),
            claims=MappingProxyType(doc),
            expires_at=exp,
        )
        until = now + config.cache_ttl
        return identity, until if exp is None else min(until, exp)
