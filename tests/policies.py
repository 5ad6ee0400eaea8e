"""Every example and test policy, compiled: for tests that must hold for all of them.

Collected, not listed by hand, so a policy added to a test or to examples/ is covered
without a change here:

- ``examples/**/*.yaml`` that are policies (have ``routes``; one that names a file
  made at run time, such as an audit signing key, by its route table alone);
- each string literal in a test module that is a policy (a YAML mapping with
  ``routes``), including ``str.format`` templates (``{{`` for a literal brace): their
  placeholders are filled with a loopback URL. A policy that does not load as it is
  (its placeholders stood for key digests, store URLs or files the test writes) is
  taken by its route table alone: each route's name, path, methods and hosts, made
  public, which is all that routing reads. One whose routes do not load either (the
  loader tests' deliberately broken policies) is left out;
- the :class:`PolicyConfig` values test modules build in code (``tests.test_envoy_config``),
  and :data:`CORNERS`, routes for the corners of the route plan.

Policies with the same route table (names, paths, methods, hosts) are kept once.
"""

from __future__ import annotations

import ast
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from authz.errors import PolicyError
from authz.policy.config import PolicyConfig, RouteConfig
from authz.policy.loader import load_policy_bytes

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
EXAMPLES = REPO / "examples"
_FILL = "http://127.0.0.1:9"


@dataclass(frozen=True)
class NamedPolicy:
    id: str  # where it comes from: a file, or module:line
    policy: PolicyConfig


class _Fill(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return _FILL


class _Formatter(string.Formatter):
    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        return _FILL, field_name  # {a.b}, {a[0]}: the same filler


def _is_policy_text(text: str) -> bool:
    if "routes" not in text:
        return False
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(doc, dict) and "routes" in doc


def _candidates(text: str) -> Iterator[str]:
    if "{{" in text or "}}" in text:
        try:
            filled = _Formatter().vformat(text, (), _Fill())
        except (ValueError, IndexError, KeyError):
            filled = None
        if filled is not None:
            yield filled
    yield text


_ROUTING_FIELDS = ("name", "path", "methods", "hosts")


def _routes_only(text: str) -> str | None:
    doc = yaml.safe_load(text)
    routes = doc.get("routes")
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        return None
    kept = [{k: r[k] for k in _ROUTING_FIELDS if k in r} | {"public": True} for r in routes]
    return yaml.safe_dump({"mode": "enforce", "routes": kept})


def _load(text: str, source: str, base_dir: Path) -> PolicyConfig | None:
    def no_files(path: Path) -> bytes:
        raise FileNotFoundError(path)

    def attempt(candidate: str) -> PolicyConfig | None:
        try:
            return load_policy_bytes(
                candidate.encode(), source=source, base_dir=base_dir, read=no_files
            )
        except PolicyError:
            return None

    texts = [c for c in _candidates(text) if _is_policy_text(c)]
    for candidate in texts:
        policy = attempt(candidate)
        if policy is not None:
            return policy
    for candidate in texts:
        routes = _routes_only(candidate)
        policy = attempt(routes) if routes is not None else None
        if policy is not None:
            return policy
    return None


def _from_examples() -> Iterator[NamedPolicy]:
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        text = path.read_text()
        if not _is_policy_text(text):
            continue
        data = path.read_bytes()
        where = str(path.relative_to(REPO))
        try:
            policy = load_policy_bytes(data, source=str(path), base_dir=path.parent)
        except PolicyError:  # it names a file made at run time (audit-policy.yaml's key)
            found = _load(text, where, path.parent)
            if found is None:
                raise
            policy = found
        yield NamedPolicy(where, policy)


def _from_test_sources() -> Iterator[NamedPolicy]:
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if "routes" not in text or "\n" not in text:
                    continue
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                policy = _load(text, where, path.parent)
                if policy is not None:
                    yield NamedPolicy(where, policy)


def _from_test_code() -> Iterator[NamedPolicy]:
    yield NamedPolicy("tests/policies.py:CORNERS", CORNERS)
    from tests import test_envoy_config as module

    for name, value in vars(module).items():
        if isinstance(value, PolicyConfig):
            yield NamedPolicy(f"tests/test_envoy_config.py:{name}", value)


def _route_table(
    policy: PolicyConfig,
) -> tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...]:
    return tuple((r.name, r.path, tuple(r.methods), tuple(r.hosts)) for r in policy.routes)


@cache
def all_policies() -> tuple[NamedPolicy, ...]:
    """Every example and test policy, one per distinct route table, in a stable order."""
    seen: set[object] = set()
    result: list[NamedPolicy] = []
    for named in (*_from_examples(), *_from_test_code(), *_from_test_sources()):
        table = _route_table(named.policy)
        if table and table not in seen:
            seen.add(table)
            result.append(named)
    return tuple(result)


def _route(name: str, path: str, methods: tuple[str, ...] = ("GET",), **kw: Any) -> RouteConfig:
    return RouteConfig(name=name, path=path, methods=methods, public=True, **kw)


#: Routes chosen for the corners of the route plan: specificity at each segment kind,
#: trailing slashes, the root, ``**`` with parameters before it, methods split across
#: routes of one path, ``*`` methods, hosts exact, wildcard, nested wildcard and twins.
CORNERS = PolicyConfig(
    version="sha256:corners",
    source="tests/policies.py:CORNERS",
    routes=(
        _route("root", "/"),
        _route("a-lit", "/a/b"),
        _route("a-lit-slash", "/a/b/"),
        _route("a-param", "/a/{x}"),
        _route("param-b", "/{x}/b"),
        _route("param-param", "/{x}/{y}"),
        _route("a-rest", "/a/{rest=**}", ("*",)),
        _route("param-rest", "/{x}/c/{rest=**}", ("POST", "PUT")),
        _route("deep", "/a/b/c/d"),
        _route("m-get", "/m", ("GET",)),
        _route("m-post", "/m", ("POST", "PATCH")),
        _route("m-any", "/m/{id}", ("*",)),
        _route("h-exact", "/h", hosts=("api.example.com",)),
        _route("h-upper", "/h/{id}", hosts=("API.Example.com",)),
        _route("h-wild", "/h", hosts=("*.example.com",)),
        _route("h-deep-wild", "/h", hosts=("*.b.example.com",)),
        _route("h-twin", "/twin", hosts=("one.test", "two.test")),
        _route("h-any", "/h"),
    ),
)
