"""The benchmark's policy, keys and token: like examples/policy.yaml, keys from a file.

The JWT provider reads its key set from a file (no issuer process to run); the
routes are those of the example policy. The request every scenario sends is
``GET /v1/orders/42`` on ``api.local`` with a bearer token that holds
``orders:read``: route matching on a template, a cached token, a scope check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from authz import devissuer

ISSUER = "https://issuer.bench"
AUDIENCE = "orders"
HOST = "api.local"
PATH = "/v1/orders/42"

POLICY = """\
version: 1
mode: enforce
undeclared_routes: deny
realm: orders
providers:
  dev:
    type: jwt
    issuer: {issuer}
    audiences: [{audience}]
    jwks_file: {jwks}
    algorithms: [ES256, RS256]
    leeway: 30s
    max_lifetime: 1h
    scope_claim: scope
    cache_size: {cache_size}
  mesh:
    type: mtls
    trust_domains: [demo.local]
  legacy:
    type: api_key
    header: x-api-key
    keys:
      - id: reporting-2026
        sha256: cdb261f25818c0b9927e93c353bdc05dddfa18e4ede433d264e910cc94b47aeb
        owner: reporting-team
        scopes: [orders:read]
        expires: "2030-01-01"
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: list-orders, path: /v1/orders, methods: [GET], providers: [dev], scopes: [orders:read]}}
  - {{name: export-orders, path: /v1/orders/export, methods: [GET], providers: [dev], scopes: [orders:export], claims: {{tenant: acme}}}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [dev, legacy], scopes: [orders:read]}}
  - {{name: create-order, path: /v1/orders, methods: [POST], providers: [dev], scopes: [orders:write], strip_credential: true}}
  - {{name: metrics, path: /internal/metrics, methods: [GET], providers: [mesh], spiffe_ids: [spiffe://demo.local/ns/ops/sa/prometheus]}}
  - {{name: mesh-sync, path: "/internal/sync/{{rest=**}}", methods: [POST], providers: [mesh], spiffe_ids: ["spiffe://demo.local/ns/sync/*"]}}
"""


@dataclass(frozen=True)
class Fixture:
    policy: Path
    jwks: Path
    jwks_json: str
    key: devissuer.DevKey
    token: str

    def mint(self, subject: str = "alice", scopes: str = "orders:read", ttl: float = 3500) -> str:
        return devissuer.mint(
            self.key,
            issuer=ISSUER,
            subject=subject,
            audience=AUDIENCE,
            scopes=scopes,
            ttl=ttl,
        )


def make(directory: Path, *, cache_size: int = 10_000) -> Fixture:
    """Write key set and policy into ``directory``; return them with a fresh token."""
    directory.mkdir(parents=True, exist_ok=True)
    key = devissuer.generate_key("ES256")
    jwks_json = json.dumps(devissuer.jwks([key]))
    jwks = directory / "jwks.json"
    jwks.write_text(jwks_json)
    policy = directory / "policy.yaml"
    policy.write_text(
        POLICY.format(issuer=ISSUER, audience=AUDIENCE, jwks=jwks, cache_size=cache_size)
    )
    fixture = Fixture(policy=policy, jwks=jwks, jwks_json=jwks_json, key=key, token="")
    return Fixture(**{**fixture.__dict__, "token": fixture.mint()})
