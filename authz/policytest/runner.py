"""Running policy tests: every case through the real engine, at a fixed clock.

One engine per test file (its cases run in order and share its state: rate-limit
buckets, the inventory), built from the policy as ``authz serve`` builds it, with
two differences, both confined to the test run:

- time is the file's ``clock`` (tokens are minted at it, and every provider, stage
  and record reads it);
- each JWT provider's key source (``jwks_uri``, ``discovery``, ``jwks_file``) is
  replaced by a JWKS file holding the public half of the test's key for it (a key
  made for the run unless the file names one), so the provider's own verification
  (issuer, audiences, algorithms, leeway, lifetime, scope claim) checks the minted
  tokens; nothing is fetched from the network.

The result of a case is a list of :class:`Mismatch` (expected vs got per field);
empty is a pass.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from authz.devissuer import DevKey, generate_key, jwks, load, mint
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Decision
from authz.policy.config import JwtProviderConfig, PolicyConfig
from authz.policy.document import json_path
from authz.policytest.spec import Case, Expectation, RequestSpec, TestFile, TestFileError


@dataclass(frozen=True, slots=True)
class Mismatch:
    field: str  # status, reason, header x-authz-subject, body.error, ...
    expected: str
    got: str


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    mismatches: tuple[Mismatch, ...]

    @property
    def passed(self) -> bool:
        return not self.mismatches


def _keys(test: TestFile) -> dict[str, DevKey]:
    out = {}
    for name, spec in test.keys:
        if spec.file is not None:
            try:
                out[name] = load(spec.file)
            except (OSError, ValueError) as exc:
                raise TestFileError([(test.path, f"$.keys.{name}.file: {exc}")]) from None
        else:
            out[name] = generate_key(spec.alg)
    return out


def with_test_keys(config: PolicyConfig, keys: dict[str, DevKey], directory: Path) -> PolicyConfig:
    """``config`` with each JWT provider in ``keys`` reading its keys from a JWKS file
    of the test key's public half (written in ``directory``)."""
    providers = []
    for p in config.providers:
        if isinstance(p, JwtProviderConfig) and p.name in keys:
            path = directory / f"{p.name}.jwks.json"
            path.write_text(json.dumps(jwks([keys[p.name]])))
            p = dataclasses.replace(p, jwks_uri=None, discovery=False, jwks_file=str(path))
        providers.append(p)
    return dataclasses.replace(config, providers=tuple(providers))


def _headers(
    spec: RequestSpec, config: PolicyConfig, keys: dict[str, DevKey], now: float
) -> dict[str, str]:
    headers = dict(spec.headers)
    token = spec.token
    if token is not None:
        provider = config.provider(token.provider)
        assert isinstance(provider, JwtProviderConfig)
        key = generate_key(keys[token.provider].alg) if token.unknown_key else keys[token.provider]
        jwt = mint(
            key,
            issuer=provider.issuer,
            subject=token.subject,
            audience=provider.audiences[0] if provider.audiences else "",
            scopes=token.scope,
            ttl=token.ttl,
            extra_claims=dict(token.claims),
            now=now - token.age,
        )
        headers.setdefault(provider.header, f"Bearer {jwt}")
    if spec.api_key is not None:
        headers.setdefault(*spec.api_key)
    if spec.body:
        headers.setdefault("content-type", "application/json")
        headers.setdefault("content-length", str(len(spec.body)))
    return headers


async def run_file(config: PolicyConfig, test: TestFile) -> list[CaseResult]:
    """Every case of ``test`` against ``config``, in order."""
    from authz.transport.envoy_grpc import build_check_request, to_request

    def clock() -> float:
        return test.clock

    keys = _keys(test)
    results = []
    with tempfile.TemporaryDirectory(prefix="authz-test-") as tmp:
        tested = with_test_keys(config, keys, Path(tmp))
        policy = CompiledPolicy(tested, clock=clock)
        await policy.shared.runtimes.start()
        await policy.start()
        counter = iter(range(1, 1 << 62))
        engine = PolicyEngine(policy, clock=clock, id_factory=lambda: f"test-{next(counter)}")
        try:
            for number, case in enumerate(test.cases, 1):
                spec = case.request
                url = urlsplit(spec.url)
                decision: Decision | None = None
                for _ in range(case.repeat):
                    check = build_check_request(
                        method=spec.method,
                        path=(url.path or "/") + (f"?{url.query}" if url.query else ""),
                        host=url.netloc,
                        headers=_headers(spec, tested, keys, test.clock),
                        body=spec.body,
                        principal=spec.principal,
                        source_address=spec.source,
                        request_id=f"test-case-{number}",
                        scheme=url.scheme,
                    )
                    decision = await engine.check(to_request(check))
                assert decision is not None
                results.append(CaseResult(case, tuple(compare(case.expect, decision))))
        finally:
            await policy.close()
            await policy.shared.runtimes.aclose()
    return results


def _outcome(decision: Decision) -> str:
    if decision.monitored:
        return "monitor"
    return "allow" if decision.allowed else "deny"


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def compare(expect: Expectation, decision: Decision) -> list[Mismatch]:
    """Each field ``expect`` names that ``decision`` does not match."""
    out: list[Mismatch] = []

    def check(field: str, expected: Any, got: Any) -> None:
        if expected is not None and expected != got:
            out.append(Mismatch(field, _show(expected), _show(got)))

    check("decision", expect.decision, _outcome(decision))
    check("status", expect.status, decision.status)
    check("reason", expect.reason, decision.reason)
    check("route", expect.route, decision.route)
    where = "upstream header" if decision.allowed else "response header"
    headers = decision.upstream_headers if decision.allowed else decision.response_headers
    got: dict[str, str] = {}
    for name, value in headers:
        got.setdefault(name.lower(), value)
    for name, value in expect.headers:
        if got.get(name) != value:
            out.append(Mismatch(f"{where} {name}", value, got.get(name, "(absent)")))
    for name in expect.headers_absent:
        if name in got:
            out.append(Mismatch(f"{where} {name}", "(absent)", got[name]))
    to_client: dict[str, str] = {}
    for name, value in decision.response_headers:
        to_client.setdefault(name.lower(), value)
    for name, value in expect.response_headers:
        if to_client.get(name) != value:
            out.append(Mismatch(f"response header {name}", value, to_client.get(name, "(absent)")))
    removed = {h.lower() for h in decision.remove_upstream_headers}
    for name in expect.removed_headers:
        if name not in removed:
            out.append(Mismatch(f"removed upstream header {name}", "removed", "kept"))
    if expect.body_absent is not None and expect.body_absent != (not decision.body):
        out.append(
            Mismatch("body", "(absent)" if expect.body_absent else "a body", decision.body or "")
        )
    if expect.body is not None:
        try:
            body = json.loads(decision.body) if decision.body else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            out.append(Mismatch("body", _show(dict(expect.body)), decision.body or "(absent)"))
        else:
            for member, value in expect.body:
                if body.get(member, _MISSING) != value:
                    shown = body.get(member, "(absent)")
                    out.append(Mismatch(f"body{json_path((member,))[1:]}", _show(value),
                                        _show(shown)))  # fmt: skip
    return out


_MISSING = object()


def render(results: Sequence[CaseResult], path: str) -> list[str]:
    """One line per case; under a failure, one line per field that differs."""
    lines = []
    for r in results:
        if r.passed:
            lines.append(f"PASS {path}::{r.case.name}")
            continue
        lines.append(f"FAIL {path}::{r.case.name}  ({r.case.location})")
        width = max(len(m.field) for m in r.mismatches)
        for m in r.mismatches:
            lines.append(f"    {m.field.ljust(width)}  expected {m.expected}")
            lines.append(f"    {' ' * width}       got {m.got}")
    return lines
