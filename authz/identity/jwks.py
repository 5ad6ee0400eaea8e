"""Signing keys of one JWT issuer: load, cache, refresh, and serve them by ``kid``.

A :class:`JwksCache` holds the issuer's current JSON Web Key Set, parsed once into
key objects. Its source is exactly one of a local file, a ``jwks_uri`` or OIDC
discovery. Lookups of known key ids never do I/O. Everything that touches the
network is rate-limited so that a flood of tokens with random ``kid`` values cannot
turn this service into an amplifier against the issuer, and a failing issuer
degrades to "last good keys" for a bounded time before requests fail closed.
Weak key material is refused when a document is parsed (:mod:`authz.identity.jwk`),
and each refused key is logged once, not once per fetch or per request. The default
fetcher is :func:`authz.identity.jwks_fetch.fetch_url`.

Time decisions use the injected :data:`~authz.identity.base.Clock`, so tests drive
TTLs with a fake clock; network I/O goes through the injected
:data:`~authz.identity.base.Fetcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from urllib.parse import urlsplit

from authz import reasons as R
from authz.errors import DependencyError, InvalidToken
from authz.identity.base import Clock, Fetcher
from authz.identity.jwk import (
    JwkKey,
    KeyRequirements,
    json_object,
    log_refused,
    parse_key_set,
)
from authz.identity.jwks_fetch import MAX_DOCUMENT_BYTES, fetch_url
from authz.policy.config import JwtProviderConfig
from authz.telemetry.metrics import MemoryMetrics, Metrics

logger = logging.getLogger("authz.jwks")

#: First retry delay (seconds) while no usable keys are held; doubles per failure.
RETRY_BASE = 0.5


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
        lookups = m.counter(
            "authz_jwks_key_lookups_total",
            "key lookups for a token by result: hit (the cached set had it) | miss",
            ("provider", "result"),
        )
        self._hit, self._miss = lookups.labels(name, "hit").inc, lookups.labels(name, "miss").inc
        self._last_success_gauge = m.gauge(
            "authz_jwks_last_success_timestamp_seconds",
            "when the key set was last loaded (Unix time; 0: never)",
            by,
        ).labels(name)
        self._usable_until_gauge = m.gauge(
            "authz_jwks_usable_until_timestamp_seconds",
            "until when the keys held serve without a fresh load (jwks_stale_ttl; Unix time)",
            by,
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
            self._hit()
            if self._inflight is None and self._refresh_due(now):
                # Keys past their TTL keep serving while a refresh runs in the background.
                self._spawn_refresh()
            return found
        if kid is None and alg is not None and self._count_compatible(alg) > 1:
            # Several candidates: a refresh cannot make the choice unambiguous.
            raise InvalidToken("token has no kid and several keys fit", reason=R.TOKEN_UNKNOWN_KID)

        self._miss()
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
        self._last_success_gauge.set(self._last_success)
        self._usable_until_gauge.set(self.usable_until)
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
