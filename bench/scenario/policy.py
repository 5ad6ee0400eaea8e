"""The scenario's policy: a small shop API, its keys, detection and enforcement.

:data:`ROUTES` is the API (JWT shoppers, API-key integrations, a public health
check; ``/v1/orders/{id}`` is what the enumerator walks). :data:`DETECTION` holds
the ``detection:`` and ``enforcement:`` sections, thresholds sized for the
scenario's compressed time (a one-minute window instead of an hour).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.scenario.model import AUDIENCE, Population

ROUTES = """\
version: 1
mode: enforce
undeclared_routes: deny
realm: shop
providers:
  dev:
    type: jwt
    issuer: {issuer}
    audiences: [{audience}]
    jwks_file: {jwks}
    algorithms: [ES256]
    max_lifetime: 2h
    leeway: 30s
    cache_size: 10000
  keys:
    type: api_key
    header: x-api-key
    keys:
{keys}
routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: list-products, path: /v1/products, methods: [GET], providers: [dev, keys], scopes: [catalog:read]}}
  - {{name: get-product, path: "/v1/products/{{sku}}", methods: [GET], providers: [dev, keys], scopes: [catalog:read]}}
  - {{name: list-orders, path: /v1/orders, methods: [GET], providers: [dev, keys], scopes: [orders:read]}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [dev, keys], scopes: [orders:read]}}
  - {{name: create-order, path: /v1/orders, methods: [POST], providers: [dev, keys], scopes: [orders:write]}}
  - {{name: me, path: /v1/me, methods: [GET], providers: [dev]}}
  - {{name: reports, path: /v1/reports, methods: [GET], providers: [keys], scopes: [orders:read]}}
"""

#: Detection and enforcement for a three-minute run: everything enforced after a 30 s
#: warm-up (the honeypot from the first request), thresholds at their defaults but the
#: ones named here.
DETECTION = """\
detection:
  mode: enforce
  warmup: {warmup}
  detectors:
    honeypot: {{response: block, target: address, ttl: 1h, paths: ["/.env", "/wp-login.php", "/admin/backup.zip", "/.git/**"]}}
    credential_stuffing: {{response: block, target: address, ttl: 15m, window: 60s, failures: 20, prefix_failures: 40, distinct_identities: 10}}
    enumeration: {{response: throttle, target: identity, ttl: 10m, window: 60s, distinct_ids: 50, sequential: 25}}
    token_sharing: {{response: revoke, target: token, window: 10m, addresses: 8}}
    data_volume: {{response: log}}
enforcement:
  store: memory
  max_entries: 100000
  throttle: {{requests: 10, per: 60s}}
"""


def key_lines(population: Population) -> str:
    return "\n".join(
        f"      - {{id: {kid}, sha256: {digest}, owner: {owner}, "
        f'scopes: [catalog:read, orders:read, orders:write], expires: "2999-01-01"}}'
        for kid, digest, owner in population.api_keys
    )


def write(
    population: Population,
    directory: Path,
    *,
    issuer: str,
    jwks: dict[str, object],
    sections: str | None = None,
    warmup: str = "30s",
) -> Path:
    """The policy file for ``population`` (``sections``: other detection/enforcement text)."""
    directory.mkdir(parents=True, exist_ok=True)
    jwks_file = directory / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    text = ROUTES.format(
        issuer=issuer, audience=AUDIENCE, jwks=jwks_file, keys=key_lines(population)
    )
    text += DETECTION.format(warmup=warmup) if sections is None else sections
    path = directory / "policy.yaml"
    path.write_text(text)
    return path


def supported(path: Path) -> tuple[bool, str]:
    """Does this build's loader take the policy? (False and the error before detection lands.)"""
    from authz.policy.loader import load_policy

    try:
        load_policy(path)
    except Exception as exc:
        return False, str(exc)
    return True, ""
