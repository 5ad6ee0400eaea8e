"""What the fuzz targets run against: a representative policy, real keys, an engine.

Everything is built once per process (:func:`world`) in a temporary directory:
the policy names every provider kind (JWT from a JWKS file, API keys, mTLS), a
public route, templated routes, a host-bound route, a route with a body contract
and a monitor route, so a decoded request can reach every stage.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz import devissuer
from authz.audit.sink import NullSink, Record
from authz.engine import CompiledPolicy, PolicyEngine
from authz.identity.jwt import JwtProvider
from authz.policy.config import JwtProviderConfig
from authz.policy.loader import load_policy

NOW = 1_800_000_000.0  # the injected clock: tokens are minted for this instant
ISSUER = "https://issuer.fuzz"
AUDIENCE = "orders"
API_KEY = "fuzz-api-key-0123456789abcdef"


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def policy_text(jwks_file: Path) -> str:
    """The representative policy (JWT, API key, mTLS; contract, hosts, templates)."""
    return f"""\
version: 1
mode: enforce
undeclared_routes: deny
realm: fuzz
validation:
  max_depth: 8
  max_members: 200
providers:
  dev:
    type: jwt
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    algorithms: [ES256, RS256, EdDSA]
    jwks_file: {jwks_file}
    leeway: 30s
    max_lifetime: 1h
  keys:
    type: api_key
    header: x-api-key
    keys:
      - {{id: k1, sha256: {_sha(API_KEY)}, owner: team, scopes: [orders:read, orders:write], expires: "2099-01-01"}}
  mesh:
    type: mtls
    trust_domains: [td.local]
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: list-orders, path: /v1/orders, methods: [GET], providers: [dev, keys], scopes: [orders:read]}}
  - name: create-order
    path: /v1/orders
    methods: [POST]
    providers: [dev, keys]
    scopes: [orders:write]
    strip_credential: true
    contract:
      content_types: [application/json, application/x-www-form-urlencoded]
      max_body_bytes: 8192
      body:
        type: object
        additionalProperties: false
        required: [items]
        properties:
          items: {{type: array, maxItems: 20, items: {{type: object, properties: {{sku: {{type: string}}, qty: {{type: integer}}}}}}}}
          note: {{type: string, maxLength: 50}}
      parameters:
        - {{name: dry_run, in: query, schema: {{type: boolean}}}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET, DELETE], providers: [mesh, dev, keys], scopes: [orders:read]}}
  - {{name: files, path: "/v1/files/{{rest=**}}", methods: [GET, PUT], providers: [dev]}}
  - {{name: metrics, path: /internal/metrics, methods: [GET], providers: [mesh], spiffe_ids: ["spiffe://td.local/ns/ops/sa/prometheus"]}}
  - {{name: beta, path: /v1/beta, methods: ["*"], providers: [keys], scopes: [beta:use], mode: monitor}}
  - {{name: admin-host, path: /admin, methods: [GET], hosts: [admin.fuzz.example], providers: [mesh]}}
"""


class CountingSink(NullSink):
    """Counts decision records (a list would grow without bound in a long run)."""

    def __init__(self) -> None:
        self.records = 0

    def emit(self, record: Record) -> None:
        self.records += 1

    on_decision = emit


@dataclass
class World:
    """The engine, a JWT provider, keys and a token, on one private event loop."""

    loop: asyncio.AbstractEventLoop
    engine: PolicyEngine
    sink: CountingSink
    provider: JwtProvider
    keys: dict[str, devissuer.DevKey]
    tokens: dict[str, str]  # a valid token per key

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


_WORLD: World | None = None


def _clock() -> float:
    return NOW


def mint(key: devissuer.DevKey, **kw: Any) -> str:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "subject": "alice",
        "audience": AUDIENCE,
        "scopes": ["orders:read", "orders:write"],
        "now": NOW,
    }
    values.update(kw)
    return devissuer.mint(key, **values)


@dataclass(frozen=True)
class Files:
    """The policy and key files of this process (built once, removed at exit)."""

    policy: Path
    keys: dict[str, devissuer.DevKey]


_FILES: Files | None = None


def files() -> Files:
    global _FILES
    if _FILES is None:
        tmp = Path(tempfile.mkdtemp(prefix="authz-fuzz-"))
        atexit.register(shutil.rmtree, tmp, True)
        keys = {alg: devissuer.generate_key(alg) for alg in ("ES256", "RS256", "EdDSA")}
        jwks_file = tmp / "jwks.json"
        jwks_file.write_text(json.dumps(devissuer.jwks(keys.values())))
        policy_file = tmp / "policy.yaml"
        policy_file.write_text(policy_text(jwks_file))
        _FILES = Files(policy_file, keys)
    return _FILES


async def build_engine(sink: CountingSink) -> tuple[CompiledPolicy, PolicyEngine]:
    """A started engine over the fuzz policy, on the running loop."""
    policy = CompiledPolicy(load_policy(files().policy), clock=_clock)
    await policy.start()
    return policy, PolicyEngine(policy, sink=sink, clock=_clock)


def world() -> World:
    """The process-wide fuzz world, built on first use."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    keys = files().keys
    loop = asyncio.new_event_loop()
    sink = CountingSink()
    policy, engine = loop.run_until_complete(build_engine(sink))
    config = next(p for p in policy.config.providers if isinstance(p, JwtProviderConfig))
    # cache_size 0: every authenticate() call verifies, so a mutation cannot hide
    # behind a cached original.
    provider = JwtProvider(_replace_cache(config), clock=_clock)
    loop.run_until_complete(provider.start())
    tokens = {alg: mint(key) for alg, key in keys.items()}
    _WORLD = World(loop, engine, sink, provider, keys, tokens)

    def close() -> None:
        loop.run_until_complete(provider.aclose())
        loop.run_until_complete(policy.close())
        loop.close()

    atexit.register(close)
    return _WORLD


def _replace_cache(config: JwtProviderConfig) -> JwtProviderConfig:
    import dataclasses

    return dataclasses.replace(config, cache_size=0)
