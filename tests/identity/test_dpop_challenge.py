"""A request without a credential on a route that takes DPoP-bound tokens is told so
(RFC 9449 7.1): ``WWW-Authenticate: DPoP algs=...``, beside Bearer while Bearer
tokens are still accepted; through the real engine."""

from __future__ import annotations

import json
from pathlib import Path

from authz import devissuer
from authz.engine import CompiledPolicy, PolicyEngine
from authz.model import Request
from authz.policy.config import DpopConfig
from authz.policy.loader import load_policy_bytes
from authz.server import make_sink

POLICY = """\
providers:
  bound: {type: jwt, issuer: "https://a.example", audiences: [x], algorithms: [ES256],
          jwks_file: "@JWKS@", dpop: required}
  either: {type: jwt, issuer: "https://b.example", audiences: [x], algorithms: [ES256],
           jwks_file: "@JWKS@", dpop: allowed}
  plain: {type: jwt, issuer: "https://c.example", audiences: [x], algorithms: [ES256],
          jwks_file: "@JWKS@"}
routes:
  - {name: dpop-only, path: /only, methods: [GET], providers: [bound]}
  - {name: either, path: /either, methods: [GET], providers: [bound, plain]}
  - {name: plain, path: /plain, methods: [GET], providers: [plain]}
"""


async def test_the_missing_credential_challenge_names_dpop(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(devissuer.jwks([devissuer.generate_key("ES256")])))
    text = POLICY.replace("@JWKS@", str(jwks))
    config = load_policy_bytes(text.encode(), source="p.yaml", base_dir=tmp_path)
    policy = CompiledPolicy(config)
    await policy.start()
    engine = PolicyEngine(policy, sink=make_sink("off"))
    try:

        async def challenge(path: str) -> str:
            decision = await engine.check(Request("GET", path, host="api.test"))
            assert (decision.status, decision.reason) == (401, "missing_credential")
            return dict(decision.response_headers)["www-authenticate"]

        algs = " ".join(DpopConfig().algorithms)
        assert await challenge("/only") == f'DPoP realm="authz", algs="{algs}"'
        assert (
            await challenge("/either") == f'Bearer realm="authz", DPoP realm="authz", algs="{algs}"'
        )

        assert await challenge("/plain") == 'Bearer realm="authz"'
    finally:
        await policy.close()
