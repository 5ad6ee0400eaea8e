"""Where a shared store's Redis is: one server (``url``), a Sentinel deployment
(``sentinels`` + ``service``) or a Redis Cluster (``cluster``), with credentials and
TLS read from files named in the policy (never written into the policy's URL).

Every shared store (rate limits, blocks and revocations, the DPoP replay cache)
takes the same fields; :func:`parse_target` reads them, reports each problem at its
place in the policy, and reads the credential files at load (a missing or empty file
is a located error, not a failure on the first request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from authz.policy.document import JsonPath

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class Reporter(Protocol):
    base_dir: Path

    def problem(self, jpath: JsonPath, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """One Redis deployment and how to log in to it."""

    url: str = ""  # one server: redis://host:port/db, rediss://..., unix://...
    sentinels: tuple[tuple[str, int], ...] = ()  # Sentinel: the sentinels to ask
    service: str = ""  # Sentinel: the monitored primary's name (``mymaster``)
    cluster: tuple[tuple[str, int], ...] = ()  # Cluster: startup nodes
    db: int = 0  # Sentinel only (a Cluster has only database 0)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Sentinel: how to log in to the sentinels themselves (their own requirepass/ACL
    # and TLS, which need not be the data nodes')
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    sentinel_tls: bool = False
    sentinel_ca_file: str | None = None
    sentinel_cert_file: str | None = None
    sentinel_key_file: str | None = None

    def or_none(self) -> RedisTarget | None:
        """None for a plain URL (the config's ``url`` says it all)."""
        return None if self == RedisTarget(url=self.url) else self

    @property
    def kind(self) -> str:
        if self.cluster:
            return "cluster"
        if self.sentinels:
            return "sentinel"
        return "url"

    def describe(self) -> str:
        """For logs: where it is, never a password."""
        if self.cluster:
            return "cluster " + ",".join(f"{h}:{p}" for h, p in self.cluster)
        if self.sentinels:
            nodes = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {self.service}@{nodes}"
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.rsplit("@", 1)[1]
        return scheme + sep + rest


def _nodes(reporter: Reporter, at: JsonPath, value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list) or not value:
        reporter.problem(at, "give a list of host:port")
        return ()
    out = []
    for i, item in enumerate(value):
        host, sep, port = str(item).rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            reporter.problem((*at, i), f"not host:port: {item!r}")
            continue
        out.append((host, int(port)))
    return tuple(out)


def _file(reporter: Reporter, at: JsonPath, value: Any) -> Path | None:
    if value is None:
        return None
    path = Path(str(value))
    path = path if path.is_absolute() else reporter.base_dir / path
    if not path.is_file():
        reporter.problem(at, f"no such file: {path}")
        return None
    return path.resolve()


def _secret(reporter: Reporter, at: JsonPath, value: Any) -> str | None:
    path = _file(reporter, at, value)
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reporter.problem(at, f"cannot read {path}: {exc}")
        return None
    if not text:
        reporter.problem(at, f"{path} is empty")
        return None
    return text


def parse_target(
    reporter: Reporter, at: JsonPath, spec: dict[str, Any], *, url_key: str = "url"
) -> RedisTarget:
    """The deployment a store names at ``at`` (problems reported there)."""
    given = [k for k in (url_key, "sentinels", "cluster") if k in spec]
    if len(given) != 1:
        reporter.problem(
            at,
            f"name one Redis deployment: {url_key!r}, 'sentinels' (with 'service') or "
            f"'cluster'" + (f", not {' and '.join(given)}" if given else ""),
        )
    url = str(spec.get(url_key, ""))
    if url_key in spec and not url.startswith(REDIS_SCHEMES):
        reporter.problem(
            (*at, url_key), f"not a Redis URL: {url!r} (redis://, rediss:// or unix://)"
        )
    sentinels = (
        _nodes(reporter, (*at, "sentinels"), spec["sentinels"]) if "sentinels" in spec else ()
    )
    cluster = _nodes(reporter, (*at, "cluster"), spec["cluster"]) if "cluster" in spec else ()
    service = str(spec.get("service", ""))
    if "sentinels" in spec and not service:
        reporter.problem((*at, "service"), "a Sentinel deployment needs the primary's name")
    if "service" in spec and "sentinels" not in spec:
        reporter.problem((*at, "service"), "only with 'sentinels'")
    db = spec.get("db", 0)
    if "db" in spec and "sentinels" not in spec:
        reporter.problem((*at, "db"), "only with 'sentinels' (a URL says its database)")
    if not isinstance(db, int) or db < 0:
        reporter.problem((*at, "db"), "a database number (0 or more)")
        db = 0
    tls, files = _tls(reporter, (*at, "tls"), spec.get("tls"))
    sentinel_tls, sentinel_files = _tls(reporter, (*at, "sentinel_tls"), spec.get("sentinel_tls"))
    for key in ("sentinel_username_file", "sentinel_password_file", "sentinel_tls"):
        if key in spec and "sentinels" not in spec:
            reporter.problem((*at, key), "only with 'sentinels'")
    if "sentinel_username_file" in spec and "sentinel_password_file" not in spec:
        reporter.problem(
            (*at, "sentinel_username_file"), "a username needs a sentinel_password_file too"
        )
    if tls and url_key in spec and not url.startswith("rediss://"):
        reporter.problem((*at, "tls"), "TLS to one server: write its URL as rediss://")
    if "password_file" in spec and "@" in url.partition("://")[2]:
        reporter.problem(
            (*at, url_key), "credentials are in password_file: keep them out of the URL"
        )
    if "username_file" in spec and "password_file" not in spec:
        reporter.problem((*at, "username_file"), "a username needs a password_file too")
    return RedisTarget(
        url=url if url_key in spec else "",
        sentinels=sentinels,
        service=service,
        cluster=cluster,
        db=db,
        username=_secret(reporter, (*at, "username_file"), spec.get("username_file")),
        password=_secret(reporter, (*at, "password_file"), spec.get("password_file")),
        tls=tls,
        **files,
        sentinel_username=_secret(
            reporter, (*at, "sentinel_username_file"), spec.get("sentinel_username_file")
        ),
        sentinel_password=_secret(
            reporter, (*at, "sentinel_password_file"), spec.get("sentinel_password_file")
        ),
        sentinel_tls=sentinel_tls,
        **{f"sentinel_{name}": path for name, path in sentinel_files.items()},
    )


def _tls(reporter: Reporter, at: JsonPath, value: Any) -> tuple[bool, dict[str, str | None]]:
    """``tls`` / ``sentinel_tls``: true, or the CA and client certificate files."""
    files: dict[str, str | None] = {"ca_file": None, "cert_file": None, "key_file": None}
    if isinstance(value, dict):
        for name in files:
            path = _file(reporter, (*at, name), value.get(name))
            files[name] = str(path) if path is not None else None
        if ("cert_file" in value) != ("key_file" in value):
            reporter.problem(at, "a client certificate needs both cert_file and key_file")
    return value is not None and value is not False, files
