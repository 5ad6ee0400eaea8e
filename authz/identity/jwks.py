"""Signing keys of one JWT issuer: load, cache, refresh, and serve them by ``kid``.

A :class:`JwksCache` holds the issuer's current JSON Web Key Set, parsed once into
key objects. Its source is exactly one of a local file, a ``jwks_uri`` or OIDC
discovery. Lookups of known key ids never do I/O. Everything that touches the
network is rate-limited so that a flood of tokens with random ``kid`` values cannot
turn this service into an amplifier against the issuer, and a failing issuer
degrades to "last good keys" for a bounded time before requests fail closed.
Weak key material (short RSA moduli, small or even exponents, curves off the allowed
list, short HMAC secrets) is refused when a document is parsed, and each refused
key is logged once, not once per fetch or per request.

Time decisions use the injected :data:`~authz.identity.base.Clock`, so tests drive
TTLs with a fake clock; network I/O goes through the injected
:data:`~authz.identity.base.Fetcher`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import http.client
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from authz import reasons as R
from authz.errors import DependencyError, InvalidToken
from authz.identity.base import Clock, Fetcher
from authz.policy.config import JwtProviderConfig
from authz.telemetry.metrics import MemoryMetrics, Metrics

logger = logging.getLogger("authz.jwks")

#: Largest JWKS or discovery document accepted; real ones are a few KiB.
MAX_DOCUMENT_BYTES = 1024 * 1024

#: First retry delay (seconds) while no usable keys are held; doubles per failure.
RETRY_BASE = 0.5

#: JWK ``kty`` -> key family, and the family each JWS ``alg`` needs.
KEY_FAMILIES = ("RSA", "EC", "OKP", "oct")
_ALG_FAMILY: dict[str, str] = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC", "ES256K": "EC",
    "EdDSA": "OKP",
    "HS256": "oct", "HS384": "oct", "HS512": "oct",
}  # fmt: skip


def algorithm_family(alg: str) -> str | None:
    """The key family (``RSA``, ``EC``, ``OKP``, ``oct``) a JWS ``alg`` needs, or None."""
    return _ALG_FAMILY.get(alg)


#: The floor for RSA moduli (NIST SP 800-57: 2048 bits); a provider may only raise it.
MIN_RSA_BITS = 2048
#: Smallest RSA public exponent accepted (e=3 invites Bleichenbacher-style forgeries
#: against lax verifiers; every real issuer uses 65537).
MIN_RSA_EXPONENT = 65537
#: EC curves accepted; secp256k1 only when the provider enables ES256K.
EC_CURVES = frozenset({"P-256", "P-384", "P-521"})
_ALG_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "secp256k1"}
#: RFC 7518 3.2: an HMAC key must be at least as long as the hash output.
_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
#: The members that make up a public key (RFC 7638), compared across refreshes.
_KEY_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x"), "oct": ("k",)}


@dataclass(frozen=True, slots=True)
class KeyRequirements:
    """What a JWK's key material must satisfy to be used by one provider."""

    min_rsa_bits: int = MIN_RSA_BITS
    curves: frozenset[str] = EC_CURVES
    #: The HS* algorithms the provider allows; when empty, ``oct`` lengths are not checked.
    hmac_algorithms: tuple[str, ...] = ()

    @classmethod
    def for_provider(cls, config: JwtProviderConfig) -> KeyRequirements:
        """The requirements of ``config`` (its ``min_rsa_bits`` and algorithms)."""
        curves = EC_CURVES | {"secp256k1"} if "ES256K" in config.algorithms else EC_CURVES
        return cls(
            min_rsa_bits=max(MIN_RSA_BITS, config.min_rsa_bits),
            curves=curves,
            hmac_algorithms=tuple(a for a in config.algorithms if a in _HMAC_KEY_BYTES),
        )

    def weakness(self, member: Mapping[str, Any], kty: str, alg: str | None) -> str | None:
        """Why the key in JWK ``member`` is too weak to use, or None.

        Malformed members return None here: the key parser reports them.
        """
        if kty == "RSA":
            n, e = _b64url_int(member.get("n")), _b64url_int(member.get("e"))
            if n is None or e is None:
                return None
            bits = n.bit_length()
            if bits < self.min_rsa_bits:
                return f"RSA modulus of {bits} bits is under the minimum of {self.min_rsa_bits}"
            shown = str(e) if e < 1 << 64 else f"of {e.bit_length()} bits"
            if e % 2 == 0:
                return f"RSA public exponent {shown} is even"
            if e < MIN_RSA_EXPONENT:
                return f"RSA public exponent {shown} is under {MIN_RSA_EXPONENT}"
        elif kty == "EC":
            crv = member.get("crv")
            if crv not in self.curves:
                allowed = ", ".join(sorted(self.curves))
                return f"EC curve {str(crv)[:20]!r} is not allowed (allowed: {allowed})"
            if alg is not None and _ALG_CURVE.get(alg) != crv:
                return f"EC curve {crv} does not fit alg {alg}"
        elif kty == "oct" and self.hmac_algorithms:
            secret = member.get("k")
            if not isinstance(secret, str):
                return None
            algs = (alg,) if alg is not None else self.hmac_algorithms
            # Without its own alg the secret may be used with any allowed HS*.
            need = max(_HMAC_KEY_BYTES.get(a, 0) for a in algs)
            length = len(secret.rstrip("=")) * 6 // 8
            if length < need:
                return (
                    f"HMAC secret of {length} bytes is shorter than the {need} bytes its hash needs"
                )
        return None


def _b64url_int(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big")


@dataclass(frozen=True, slots=True)
class RefusedKey:
    """A JWKS member that was not accepted, and why."""

    where: str  # "<source>: keys[<index>]"
    kid: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class JwkKey:
    """One usable verification key from a JWKS.

    ``key`` is a ``cryptography`` public key object (``bytes`` for ``oct``);
    ``alg`` is the JWK's own ``alg`` member, which, when present, is the only
    algorithm the key may be used with.
    """

    kid: str | None
    key: Any  # a cryptography public key, or bytes for an "oct" key
    family: str
    alg: str | None = None
    #: The JWK's public key members, canonical: the same key has the same material
    #: across refreshes (so cache entries verified with it stay valid).
    material: str = ""

    def compatible(self, alg: str) -> bool:
        """True if a token signed with ``alg`` may be verified with this key."""
        return algorithm_family(alg) == self.family and (self.alg is None or self.alg == alg)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to http(s); urllib would also follow one to ftp://."""

    max_redirections = 3

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"refusing redirect to {newurl!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_RedirectHandler)


def _fetch_blocking(url: str, timeout: float) -> bytes:
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        # Never let a configured or discovered URL read local files (file://) etc.
        raise OSError(f"refusing to fetch non-http(s) URL {url!r}")
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "authz-jwks"}
    )
    # The socket timeout bounds each read, not the whole body: an issuer (or anything
    # in between) that trickles one byte at a time would hold this thread and its
    # connection forever. So the body is read against one deadline for the whole call.
    deadline = time.monotonic() + timeout
    try:
        with _opener.open(request, timeout=timeout) as response:
            status = getattr(response, "status", 200)
            if status != 200:
                raise OSError(f"GET {url}: HTTP {status}")
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_DOCUMENT_BYTES:
                if time.monotonic() >= deadline:
                    raise OSError(f"GET {url}: body not received within {timeout:g}s")
                chunk = response.read1(MAX_DOCUMENT_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            body = b"".join(chunks)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response (and its socket) open otherwise
        raise OSError(f"GET {url}: HTTP {exc.code}") from None
    except (http.client.HTTPException, ValueError) as exc:
        # Protocol errors are not OSError; the Fetcher contract promises OSError.
        raise OSError(f"GET {url}: {exc}") from exc
    if len(body) > MAX_DOCUMENT_BYTES:
        raise OSError(f"GET {url}: response larger than {MAX_DOCUMENT_BYTES} bytes")
    return body


async def fetch_url(url: str, timeout: float) -> bytes:
    """The default :data:`Fetcher`: GET ``url`` with urllib in a worker thread.

    Refuses non-http(s) URLs (also as redirect targets) and bodies over
    :data:`MAX_DOCUMENT_BYTES`; raises :class:`OSError` on any failure.
    """
    return await asyncio.to_thread(_fetch_blocking, url, timeout)


def json_object(data: Any, source: str) -> Mapping[str, Any]:
    """``data`` (bytes or text) parsed as one JSON object, or ValueError naming ``source``."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError, TypeError) as exc:
        raise ValueError(f"{source}: not JSON: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ValueError(f"{source}: not a JSON object")
    return doc


def parse_key_set(
    data: bytes | str | Mapping[str, Any],
    *,
    source: str = "jwks",
    requirements: KeyRequirements | None = None,
) -> tuple[list[JwkKey], list[RefusedKey]]:
    """Parse a JWKS document: the usable verification keys and the keys refused.

    Keys whose ``use`` is not ``sig`` or whose ``key_ops`` exclude ``verify`` are
    skipped silently; keys that cannot be parsed, are too weak for
    ``requirements``, or repeat a kid are refused (and returned, for the caller to
    log). Raises :class:`ValueError` only when the document itself is unusable.
    """
    doc = data if isinstance(data, Mapping) else json_object(data, source)
    members = doc.get("keys")
    if not isinstance(members, list):
        raise ValueError(f"{source}: no 'keys' array")
    need = requirements if requirements is not None else KeyRequirements()
    keys: list[JwkKey] = []
    refused: list[RefusedKey] = []
    seen: set[str] = set()
    for index, member in enumerate(members):
        where = f"{source}: keys[{index}]"
        key = _parse_jwk(member, where, need)
        if key is None:
            continue
        if isinstance(key, RefusedKey):
            refused.append(key)
            continue
        if key.kid is not None:
            if key.kid in seen:
                # An ambiguous kid would make the choice of key depend on order.
                refused.append(RefusedKey(where, key.kid, "duplicate kid skipped"))
                continue
            seen.add(key.kid)
        keys.append(key)
    return keys, refused


def parse_jwks(
    data: bytes | str | Mapping[str, Any],
    *,
    source: str = "jwks",
    requirements: KeyRequirements | None = None,
) -> list[JwkKey]:
    """Parse a JWKS document into usable verification keys, logging each refused key.

    Raises :class:`ValueError` when the document itself is unusable or holds no
    usable key, so that a bad document never replaces good keys.
    """
    keys, refused = parse_key_set(data, source=source, requirements=requirements)
    log_refused(refused)
    if not keys:
        raise ValueError(f"{source}: no usable signing keys")
    return keys


def log_refused(refused: Sequence[RefusedKey], provider: str | None = None) -> None:
    """One warning line per refused key, naming its kid and why."""
    prefix = f"provider {provider}: " if provider else ""
    for r in refused:
        logger.warning("%s%s: key %r refused: %s", prefix, r.where, r.kid, r.reason)


def _parse_jwk(member: Any, where: str, need: KeyRequirements) -> JwkKey | RefusedKey | None:
    if not isinstance(member, dict):
        return RefusedKey(where, None, "not a JSON object")
    use = member.get("use")
    if use is not None and use != "sig":
        return None  # encryption keys are not for us; not worth a warning
    ops = member.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    raw_kid = member.get("kid")
    kid = raw_kid if isinstance(raw_kid, str) else None
    kty = member.get("kty")
    if kty not in KEY_FAMILIES:
        return RefusedKey(where, kid, f"unsupported kty {str(kty)[:20]!r}")
    if raw_kid is not None and kid is None:
        return RefusedKey(where, None, "kid is not a string")
    alg = member.get("alg")
    if alg is not None and (not isinstance(alg, str) or algorithm_family(alg) != kty):
        return RefusedKey(where, kid, f"alg {str(alg)[:20]!r} does not fit kty {kty!r}")
    weakness = need.weakness(member, kty, alg)
    if weakness is not None:
        return RefusedKey(where, kid, weakness)
    try:
        parsed = jwt.PyJWK(member)
    except Exception as exc:  # PyJWT raises several types; none may escape
        return RefusedKey(where, kid, f"unparsable key: {exc}")
    key = parsed.key
    if hasattr(key, "public_key"):
        # A JWKS that leaks a private key is still usable for verification; never
        # keep the private half in memory longer than needed.
        key = key.public_key()
    material = json.dumps(
        [kty, alg, [member.get(m) for m in _KEY_MEMBERS[kty]]], separators=(",", ":")
    )
    return JwkKey(kid=kid, key=key, family=kty, alg=alg, material=material)


class JwksCache:
    """The verification keys of one issuer, kept fresh.

    * :meth:`start` loads the keys once and starts a background task that refreshes
      them when they are older than ``jwks_ttl`` (files: when their mtime changed,
      checked at most once per ``jwks_refresh_interval``).
    * :meth:`key_for` returns a known key without I/O. An unknown kid causes at most
      one refresh per ``jwks_refresh_interval`` for the whole cache; concurrent
      callers share the refresh in flight.
    * While the issuer is unreachable the last good keys serve for ``jwks_stale_ttl``
      after their last successful fetch; past that, lookups raise
      ``DependencyError(reason=R.JWKS_UNAVAILABLE)``.
    * With no usable keys (never loaded, or stale) retries back off from 1 s up to
      ``jwks_refresh_interval``, so that a service recovers soon after its issuer.
    * A refresh that brings a key unchanged (same kid and material) keeps the same
      :class:`JwkKey` object; :attr:`generation` changes whenever the set of keys
      served does. A cache of verified tokens remembers the key and generation it
      verified with and asks :meth:`holds` (O(1)) when the generation moved on.
    * Keys refused as weak or malformed are logged once per kid while they stay in
      the issuer's document, not on every refresh.

    The counters ``fetches``, ``failures``, ``unknown_kid_refreshes`` and
    ``suppressed_refreshes`` read the metrics (``authz_jwks_*_total{provider}``).
    A runtime (:mod:`authz.runtime`): constructing it starts nothing; :meth:`start`
    loads the keys and starts the refresh task, :meth:`aclose` cancels it.
    """

    def __init__(
        self,
        config: JwtProviderConfig,
        *,
        clock: Clock = time.time,
        fetcher: Fetcher | None = None,
        poll_interval: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        m = metrics if metrics is not None else MemoryMetrics()
        by, name = ("provider",), config.name
        self._fetches = m.counter("authz_jwks_fetches_total", "key set fetches", by).labels(name)
        self._failures = m.counter(
            "authz_jwks_failures_total", "key set fetches that failed", by
        ).labels(name)
        self._unknown_kid = m.counter(
            "authz_jwks_unknown_kid_refreshes_total", "refreshes for an unknown kid", by
        ).labels(name)
        self._suppressed = m.counter(
            "authz_jwks_suppressed_refreshes_total", "unknown-kid refreshes not made (cooldown)", by
        ).labels(name)
        sources = sum((config.jwks_file is not None, config.jwks_uri is not None, config.discovery))
        if sources != 1:
            raise ValueError(
                f"provider {config.name!r}: exactly one of jwks_file, jwks_uri, discovery"
            )
        self.config = config
        self._clock = clock
        self._fetcher: Fetcher = fetcher if fetcher is not None else fetch_url
        # How often the background task wakes to ask the clock whether work is due.
        self._poll_interval = (
            poll_interval
            if poll_interval is not None
            else max(0.05, min(config.jwks_refresh_interval, config.jwks_ttl, 10.0))
        )
        self.requirements = KeyRequirements.for_provider(config)
        self._by_kid: dict[str, JwkKey] = {}
        self._all: tuple[JwkKey, ...] = ()
        #: Bumped whenever the set of keys served changes (rotation, revocation).
        self.generation = 0
        #: Keys are usable while the clock reads less than this (last good fetch
        #: plus ``jwks_stale_ttl``); -inf while no keys are held.
        self.usable_until = -math.inf
        # (kid or position, reason) of the keys refused in the last document parsed,
        # so that each is logged once while the issuer keeps publishing it.
        self._refused: frozenset[tuple[str, str]] = frozenset()
        self._last_success: float | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._background: asyncio.Task[None] | None = None
        self._jwks_uri: str | None = config.jwks_uri  # discovery fills it in
        self._file_stamp: tuple[int, int] | None = None
        self._consecutive_failures = 0

    # Counters (in the metrics, per provider name): documents actually loaded (HTTP
    # GETs of the JWKS, or file reads); refresh attempts that failed (the previous
    # keys were kept); refreshes caused by a token with an unknown kid; unknown-kid
    # lookups that caused no refresh of their own (rate limit, or they joined a
    # refresh already in flight).

    @property
    def fetches(self) -> int:
        return int(getattr(self._fetches, "value", 0))

    @property
    def failures(self) -> int:
        return int(getattr(self._failures, "value", 0))

    @property
    def unknown_kid_refreshes(self) -> int:
        return int(getattr(self._unknown_kid, "value", 0))

    @property
    def suppressed_refreshes(self) -> int:
        return int(getattr(self._suppressed, "value", 0))

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Load the keys once and start background refreshes.

        A failed initial load is logged, not raised: the cache stays not
        :meth:`ready` and the background task keeps retrying.
        """
        if self._background is not None:
            return
        await self.refresh()
        self._background = asyncio.get_running_loop().create_task(
            self._run(), name=f"jwks-refresh:{self.config.name}"
        )

    def ready(self) -> bool:
        """True while the cache holds keys that are not past ``jwks_stale_ttl``."""
        return self._usable(self._clock())

    async def aclose(self) -> None:
        """Stop the background task and any refresh in flight."""
        for task in (self._background, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._background = None
        self._inflight = None

    @property
    def keys(self) -> tuple[JwkKey, ...]:
        """The keys currently served."""
        return self._all

    def holds(self, key: JwkKey) -> bool:
        """True if ``key`` (this very object) is still among the keys served."""
        if key.kid is not None:
            return self._by_kid.get(key.kid) is key
        return any(k is key for k in self._all)

    # -- lookups -----------------------------------------------------------------

    async def key_for(self, kid: str | None, alg: str | None = None) -> JwkKey:
        """The key a token with header ``kid`` (and ``alg``) must be verified with.

        A token without ``kid`` is accepted only when exactly one key is compatible
        with ``alg``. Raises ``InvalidToken(reason=R.TOKEN_UNKNOWN_KID)`` or
        ``DependencyError(reason=R.JWKS_UNAVAILABLE)``.
        """
        now = self._clock()
        if not self._usable(now):
            if self._inflight is not None or self._refresh_allowed(now):
                await self.refresh()
            if not self._usable(self._clock()):
                raise DependencyError(
                    f"no usable keys for issuer {self.config.issuer}", reason=R.JWKS_UNAVAILABLE
                )

        found = self._lookup(kid, alg)
        if found is not None:
            if self._inflight is None and self._refresh_due(now):
                # Keys past their TTL keep serving while a refresh runs in the background.
                self._spawn_refresh()
            return found
        if kid is None and alg is not None and self._count_compatible(alg) > 1:
            # Several candidates: a refresh cannot make the choice unambiguous.
            raise InvalidToken("token has no kid and several keys fit", reason=R.TOKEN_UNKNOWN_KID)

        if self._inflight is not None:
            self._suppressed.inc()
            await self.refresh()
        elif self._refresh_allowed(self._clock()):
            self._unknown_kid.inc()
            await self.refresh()
        else:
            self._suppressed.inc()
            raise InvalidToken(f"unknown key id {kid!r}", reason=R.TOKEN_UNKNOWN_KID)
        found = self._lookup(kid, alg)
        if found is None:
            raise InvalidToken(f"unknown key id {kid!r}", reason=R.TOKEN_UNKNOWN_KID)
        return found

    def _lookup(self, kid: str | None, alg: str | None) -> JwkKey | None:
        if kid is not None:
            return self._by_kid.get(kid)
        if alg is None:
            return self._all[0] if len(self._all) == 1 else None
        candidates = [k for k in self._all if k.compatible(alg)]
        return candidates[0] if len(candidates) == 1 else None

    def _count_compatible(self, alg: str) -> int:
        return sum(1 for k in self._all if k.compatible(alg))

    # -- refresh -----------------------------------------------------------------

    def _usable(self, now: float) -> bool:
        return now < self.usable_until

    def _refresh_allowed(self, now: float) -> bool:
        if self._last_attempt is None:
            return True
        interval = self.config.jwks_refresh_interval
        if not self._usable(now):
            # Without usable keys every request fails anyway: retry sooner (1 s, 2 s,
            # 4 s, ... up to the interval) so that the service recovers promptly once
            # the issuer is back, still one fetch at a time per process.
            interval = min(interval, RETRY_BASE * 2 ** min(self._consecutive_failures, 16))
        return now - self._last_attempt >= interval

    def _refresh_due(self, now: float) -> bool:
        if not self._refresh_allowed(now):
            return False
        if self.config.jwks_file is not None:
            return True  # a cheap stat; the file is re-read only if it changed
        return self._last_success is None or now - self._last_success >= self.config.jwks_ttl

    def _spawn_refresh(self) -> asyncio.Task[bool]:
        task = self._inflight
        if task is None:
            # Stamped before the task runs so that every caller in this loop
            # iteration already sees the attempt and joins instead of starting another.
            self._last_attempt = self._clock()
            task = asyncio.get_running_loop().create_task(
                self._do_refresh(), name=f"jwks-fetch:{self.config.name}"
            )
            self._inflight = task
        return task

    async def refresh(self) -> bool:
        """Refresh now (or join the refresh in flight). True if it succeeded.

        Never raises for fetch or parse failures: they are logged and counted.
        """
        # shield: a caller cancelled by its own deadline must not cancel the
        # refresh that other callers are waiting on.
        return await asyncio.shield(self._spawn_refresh())

    async def _do_refresh(self) -> bool:
        try:
            keys = await self._load()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure mode of I/O and parsing; never raw
            self._failures.inc()
            self._consecutive_failures += 1
            logger.warning(
                "provider %s: refreshing keys failed (keeping %d previous keys): %s",
                self.config.name,
                len(self._all),
                str(exc) or type(exc).__name__,  # a timeout's text is empty
            )
            return False
        finally:
            self._inflight = None
        if keys is not None:
            self._install(keys)
        self._last_success = self._clock()
        self.usable_until = self._last_success + self.config.jwks_stale_ttl
        self._consecutive_failures = 0
        return True

    def _install(self, keys: list[JwkKey]) -> None:
        # An unchanged key keeps its object, so that tokens verified with it stay
        # cached; a changed or removed one is gone, and with it every cache entry.
        old = self._all
        current = {(k.kid, k.material): k for k in old}
        fresh = tuple(current.get((k.kid, k.material), k) for k in keys)
        if len(fresh) != len(old) or any(a is not b for a, b in zip(fresh, old, strict=True)):
            self.generation += 1
        self._all = fresh
        self._by_kid = {k.kid: k for k in fresh if k.kid is not None}

    def _parse(self, data: bytes, source: str) -> list[JwkKey]:
        keys, refused = parse_key_set(data, source=source, requirements=self.requirements)
        marks = {(r.kid if r.kid is not None else r.where, r.reason): r for r in refused}
        log_refused([r for mark, r in marks.items() if mark not in self._refused], self.config.name)
        self._refused = frozenset(marks)
        if not keys:
            raise ValueError(f"{source}: no usable signing keys ({len(refused)} refused)")
        return keys

    async def _run(self) -> None:
        while True:
            # Poll faster while unusable, so the shorter retry backoff is honoured.
            usable = self._usable(self._clock())
            await asyncio.sleep(self._poll_interval if usable else min(self._poll_interval, 0.25))
            if self._inflight is None and self._refresh_due(self._clock()):
                await self.refresh()

    async def _load(self) -> list[JwkKey] | None:
        """Fetch and parse the key set; None means "unchanged" (file not modified)."""
        config = self.config
        if config.jwks_file is not None:
            return await asyncio.to_thread(self._load_file, config.jwks_file)
        uri = self._jwks_uri
        if uri is None:
            uri = await self._discover()
        try:
            data = await self._fetch(uri)
        except Exception:
            if config.discovery:
                # The issuer may have moved its keys; discover again next time.
                self._jwks_uri = None
            raise
        self._fetches.inc()
        return self._parse(data, uri)

    def _load_file(self, path: str) -> list[JwkKey] | None:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._file_stamp and self._all:
            return None
        with open(path, "rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"{path}: larger than {MAX_DOCUMENT_BYTES} bytes")
        self._fetches.inc()
        keys = self._parse(data, path)
        self._file_stamp = stamp
        return keys

    async def _fetch(self, url: str) -> bytes:
        timeout = self.config.jwks_timeout
        # The fetcher's own timeout is per socket operation; this bounds the whole call.
        return await asyncio.wait_for(self._fetcher(url, timeout), timeout + 1.0)

    async def _discover(self) -> str:
        issuer = self.config.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = json_object(await self._fetch(url), url)
        if doc.get("issuer") != issuer:
            # OIDC Discovery 4.3: a mismatch means the document is not this issuer's.
            raise ValueError(
                f"{url}: discovery issuer {doc.get('issuer')!r} does not match {issuer!r}"
            )
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or urlsplit(uri).scheme.lower() not in ("http", "https"):
            raise ValueError(f"{url}: jwks_uri missing or not http(s): {uri!r}")
        if urlsplit(issuer).scheme.lower() == "https" and urlsplit(uri).scheme.lower() != "https":
            raise ValueError(f"{url}: jwks_uri {uri!r} downgrades an https issuer to http")
        self._jwks_uri = uri
        return uri
