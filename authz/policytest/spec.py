"""Policy test files: read once, checked against the policy, into frozen values.

A test file is YAML (:file:`tests.schema.json` beside this module) with ``cases``,
each a request and the decision expected for it; ``clock`` fixes the time they are
decided at and ``keys`` names the key each JWT provider's tokens are signed with.
Everything wrong with a file is reported with its place (``file:line:column:
$.json.path: message``), as the policy loader reports a policy, and nothing runs:
:class:`TestFileError` (``authz test`` exits 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from authz.errors import PolicyError
from authz.policy.config import ApiKeyProviderConfig, JwtProviderConfig, PolicyConfig
from authz.policy.document import JsonPath, json_path, parse_duration, parse_yaml

#: When a file gives no ``clock``: a fixed instant, so that results never depend on today.
DEFAULT_CLOCK = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
DEFAULT_TTL = 300.0
#: Algorithms :mod:`authz.devissuer` can sign with, in the order a key is picked.
SIGNING_ALGORITHMS = ("ES256", "RS256", "EdDSA")


class TestFileError(Exception):
    """A test file that cannot be run; ``problems`` are (location, message) pairs."""

    __test__ = False  # not a pytest class

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """A JWT minted for the case with the test's key of ``provider``."""

    provider: str
    subject: str = "test-subject"
    scope: str = ""
    claims: tuple[tuple[str, Any], ...] = ()  # extra claims (a None value removes one)
    ttl: float = DEFAULT_TTL
    age: float = 0.0  # issued this many seconds before the clock
    unknown_key: bool = False  # signed with a key nobody publishes


@dataclass(frozen=True, slots=True)
class RequestSpec:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    source: str = "127.0.0.1"
    principal: str = ""
    token: TokenSpec | None = None
    api_key: tuple[str, str] | None = None  # (header, value)


@dataclass(frozen=True, slots=True)
class Expectation:
    """What is checked; None (or empty) is not checked."""

    decision: str | None = None  # allow | deny | monitor
    status: int | None = None
    reason: str | None = None
    route: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    headers_absent: tuple[str, ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()  # the client's, allow or deny
    removed_headers: tuple[str, ...] = ()
    body: tuple[tuple[str, Any], ...] | None = None  # members the deny body must have
    body_absent: bool | None = None


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    location: str  # file:line of the case
    request: RequestSpec
    expect: Expectation
    repeat: int = 1  # sent this many times; the last answer is checked


@dataclass(frozen=True, slots=True)
class KeySpec:
    alg: str
    file: str | None = None  # absolute path of a PEM private key


@dataclass(frozen=True, slots=True)
class TestFile:
    __test__ = False  # not a pytest class

    path: str
    clock: float
    keys: tuple[tuple[str, KeySpec], ...]  # one per JWT provider of the policy
    cases: tuple[Case, ...]


@cache
def _validator() -> Draft202012Validator:
    schema = json.loads((Path(__file__).parent / "tests.schema.json").read_text())
    return Draft202012Validator(schema)


def load_test_file(path: str | Path, policy: PolicyConfig) -> TestFile:
    """Read and check one test file against ``policy``; raise TestFileError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TestFileError([(str(path), f"cannot read the test file: {exc.strerror}")]) from None
    try:
        doc, marks, key_marks = parse_yaml(data, str(path))
    except PolicyError as exc:
        raise TestFileError(list(exc.problems)) from None
    return _Reader(str(path), path.parent, doc, marks, key_marks, policy).read()


class _Reader:
    def __init__(
        self,
        source: str,
        base: Path,
        doc: Any,
        marks: dict[JsonPath, tuple[int, int]],
        key_marks: dict[JsonPath, tuple[int, int]],
        policy: PolicyConfig,
    ) -> None:
        self.source, self.base, self.doc, self.policy = source, base, doc, policy
        self.marks, self.key_marks = marks, key_marks
        self.problems: list[tuple[str, str]] = []

    def where(self, jpath: JsonPath, *, key: bool = False) -> str:
        if key and jpath in self.key_marks:
            line, column = self.key_marks[jpath]
            return f"{self.source}:{line}:{column}"
        for cut in range(len(jpath), -1, -1):
            mark = self.marks.get(tuple(jpath[:cut]))
            if mark is not None:
                return f"{self.source}:{mark[0]}:{mark[1]}"
        return self.source

    def problem(self, jpath: JsonPath, message: str, *, key: bool = False) -> None:
        self.problems.append((self.where(jpath, key=key), f"{json_path(jpath)}: {message}"))

    def read(self) -> TestFile:
        for err in _validator().iter_errors(self.doc):
            jpath = tuple(err.absolute_path)
            if err.validator == "additionalProperties" and isinstance(err.instance, dict):
                known = set(err.schema.get("properties", {}))
                for extra in (k for k in err.instance if k not in known):
                    where = self.where((*jpath, extra), key=True)
                    self.problems.append((where, f"{json_path(jpath)}: unknown field {extra!r}"))
            else:
                self.problem(jpath, err.message)
        if self.problems:
            raise TestFileError(self.problems)
        doc = self.doc
        clock = self._clock(doc.get("clock"))
        keys = self._keys(doc.get("keys") or {})
        cases = tuple(self._case(c, ("cases", i)) for i, c in enumerate(doc["cases"]))
        names: dict[str, int] = {}
        for i, case in enumerate(cases):
            if case.name in names:
                self.problem(("cases", i, "name"), f"a second case named {case.name!r}")
            names[case.name] = i
        if self.problems:
            raise TestFileError(self.problems)
        return TestFile(self.source, clock, keys, cases)

    def _clock(self, value: Any) -> float:
        if value is None:
            return DEFAULT_CLOCK
        if isinstance(value, int | float):
            return float(value)
        try:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.problem(("clock",), f"expected ISO 8601 time or unix seconds, got {value!r}")
            return DEFAULT_CLOCK
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()

    def _jwt(self, name: str) -> JwtProviderConfig | None:
        for p in self.policy.providers:
            if p.name == name and isinstance(p, JwtProviderConfig):
                return p
        return None

    def _keys(self, given: dict[str, Any]) -> tuple[tuple[str, KeySpec], ...]:
        for name in given:
            if self._jwt(name) is None:
                self.problem(("keys", name), f"the policy has no JWT provider {name!r}", key=True)
        out = []
        for p in self.policy.providers:
            if not isinstance(p, JwtProviderConfig):
                continue
            spec = given.get(p.name) or {}
            usable = [a for a in SIGNING_ALGORITHMS if a in p.algorithms]
            alg = spec.get("alg") or (usable[0] if usable else "")
            if spec.get("alg") and alg not in p.algorithms:
                self.problem(("keys", p.name, "alg"), f"provider {p.name} does not accept {alg}")
            file = None
            if spec.get("file"):
                file = str((self.base / spec["file"]).resolve())
                if not Path(file).is_file():
                    self.problem(("keys", p.name, "file"), f"no such key file {file}")
            elif not alg and p.name in given:
                self.problem(
                    ("keys", p.name),
                    f"provider {p.name} accepts none of {', '.join(SIGNING_ALGORITHMS)}: "
                    "give a key file",
                )
            out.append((p.name, KeySpec(alg=alg, file=file)))
        return tuple(out)

    def _duration(self, jpath: JsonPath, value: Any, default: float) -> float:
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.problem(jpath, str(exc))
            return default

    def _case(self, raw: dict[str, Any], jpath: JsonPath) -> Case:
        request = self._request(raw["request"], (*jpath, "request"))
        return Case(
            name=raw["name"],
            location=self.where(jpath),
            request=request,
            expect=self._expect(raw["expect"]),
            repeat=raw.get("repeat", 1),
        )

    def _request(self, raw: dict[str, Any], jpath: JsonPath) -> RequestSpec:
        headers = _headers(raw.get("headers"))
        body = raw.get("body")
        data = b""
        if isinstance(body, str):
            data = body.encode()
        elif body is not None:
            data = json.dumps(body).encode()
        token = None
        if "token" in raw:
            token = self._token(raw["token"], (*jpath, "token"))
        api_key = None
        if "api_key" in raw:
            name = raw["api_key"]["provider"]
            provider = next(
                (
                    p
                    for p in self.policy.providers
                    if p.name == name and isinstance(p, ApiKeyProviderConfig)
                ),
                None,
            )
            if provider is None:
                self.problem((*jpath, "api_key", "provider"), f"no API key provider {name!r}")
            else:
                api_key = (provider.header, raw["api_key"]["value"])
        return RequestSpec(
            method=(raw.get("method") or ("POST" if data else "GET")).upper(),
            url=raw["url"],
            headers=headers,
            body=data,
            source=raw.get("source", "127.0.0.1"),
            principal=raw.get("principal", ""),
            token=token,
            api_key=api_key,
        )

    def _token(self, raw: dict[str, Any], jpath: JsonPath) -> TokenSpec:
        name = raw["provider"]
        if self._jwt(name) is None:
            self.problem((*jpath, "provider"), f"the policy has no JWT provider {name!r}")
        scope = raw.get("scope", "")
        return TokenSpec(
            provider=name,
            subject=raw.get("sub", "test-subject"),
            scope=scope if isinstance(scope, str) else " ".join(scope),
            claims=tuple((raw.get("claims") or {}).items()),
            ttl=self._duration((*jpath, "ttl"), raw.get("ttl"), DEFAULT_TTL),
            age=self._duration((*jpath, "age"), raw.get("age"), 0.0),
            unknown_key=raw.get("signed_by") == "unknown_key",
        )

    @staticmethod
    def _expect(raw: dict[str, Any]) -> Expectation:
        body = raw.get("body")
        return Expectation(
            decision=raw.get("decision"),
            status=raw.get("status"),
            reason=raw.get("reason"),
            route=raw.get("route"),
            headers=_headers(raw.get("headers")),
            headers_absent=tuple(h.lower() for h in raw.get("headers_absent", ())),
            response_headers=_headers(raw.get("response_headers")),
            removed_headers=tuple(h.lower() for h in raw.get("removed_headers", ())),
            body=tuple(body.items()) if body is not None else None,
            body_absent=raw.get("body_absent"),
        )


def _headers(raw: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple((str(k).lower(), _text(v)) for k, v in (raw or {}).items())


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
