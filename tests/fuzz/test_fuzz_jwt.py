"""Fuzz target 4: the JWT front end (``parse_authorization``, ``verify``, ``authenticate``).

Arbitrary header values and strings raise nothing but InvalidToken,
MultipleCredentials or DependencyError; a real token mutated (bits flipped in any
segment, re-encoded with random JSON, random alg/kid/crit, non-canonical base64,
segments swapped between tokens) is never accepted unless it is byte-identical to
the original. The one exception, an ES256 signature's (r, n - s) twin, is pinned
below as finding F4 (fuzz/README.md).
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from authz.errors import InvalidToken
from authz.identity.bearer import parse_authorization
from fuzz import targets
from fuzz.fixtures import world
from tests.fuzz.profiles import DataChooser, budget

HEADER_TEXT = st.lists(
    st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", " ", ",", "\t", "a.b.c", "x", "=", ""])
    | st.text(max_size=6),
    max_size=8,
).map("".join)


@budget(300)
@given(HEADER_TEXT | st.text(max_size=60), st.booleans())
@example("Bearer a.b.c, Bearer d.e.f", False)
@example("Basic eDp5", True)
@example("Bearer", False)
@example(", ,", False)
def test_parse_authorization(value: str, dedicated: bool) -> None:
    targets.check_authorization(value, dedicated)


@budget(200)
@given(
    st.text(max_size=80)
    | st.from_regex(
        r"[A-Za-z0-9_-]{0,30}\.[A-Za-z0-9_-]{0,30}\.[A-Za-z0-9_-]{0,30}", fullmatch=True
    )
)
@example("e30.e30.")
@example("eyJhbGciOiJub25lIn0.e30.")
def test_arbitrary_strings(token: str) -> None:
    targets.check_token(token)


@budget(250)
@given(st.data())
def test_mutated_real_tokens_are_refused(data: st.DataObject) -> None:
    c = DataChooser(data)
    tokens = list(world().tokens.values())
    original = c.pick(tokens)
    mutated = original
    for _ in range(c.integer(1, 3)):
        mutated = targets.mutate_token(mutated, tokens, c)
    targets.check_mutated_token(original, mutated)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_the_original_is_accepted(alg: str) -> None:
    token = world().tokens[alg]
    targets.check_token(token, token)  # the oracle accepts what it must accept


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_non_canonical_base64_of_each_segment_is_refused(alg: str) -> None:
    token = world().tokens[alg]
    segments = token.split(".")
    refused = 0
    for k, seg in enumerate(segments):
        if len(seg) % 4 not in (2, 3):
            continue
        chars = targets._B64CHARS
        variant = seg[:-1] + chars[chars.index(seg[-1]) | 1]
        assert targets.b64url_decode(variant) == targets.b64url_decode(seg)  # same bytes
        forged = ".".join([*segments[:k], variant, *segments[k + 1 :]])
        with pytest.raises(InvalidToken) as err:
            world().run(world().provider.verify(forged))
        assert err.value.reason == "token_malformed"
        refused += 1
    assert refused  # at least one segment of each token has unused bits


def test_finding_f4_ecdsa_twin_signature_verifies() -> None:
    """F4: an ES256 token's (r, n - s) twin is a different string that verifies.

    ECDSA allows both signatures; JWS does not require low-s, so the service cannot
    refuse the twin without refusing half of all real ES256 tokens. What it means:
    the token string is not a unique name of a token (the verified-token cache
    holds both; nothing may key revocation or replay on the raw string). If jwt.py
    ever normalises s, flip this assertion.
    """
    w = world()
    original = w.tokens["ES256"]
    twin = targets.ecdsa_twin(original)
    assert twin != original
    identity, _ = w.run(w.provider.verify(twin))
    assert identity.subject == "alice"


def test_parse_authorization_returns_the_one_token() -> None:
    assert parse_authorization("Bearer  a.b.c ", dedicated=False) == "a.b.c"


def test_finding_f5_lone_surrogate_claim_is_a_token_error_not_internal_error() -> None:
    from authz.transport.envoy_grpc import CheckRequest, build_check_request
    from fuzz.fixtures import mint

    w = world()
    token = mint(w.keys["ES256"], subject="\ud800")  # the JSON holds the escape "\ud800"
    check = build_check_request(
        method="GET", path="/v1/orders", host="h", headers={"authorization": f"Bearer {token}"}
    )
    decision = w.run(
        w.engine.check(targets.to_request(CheckRequest.FromString(check.SerializeToString())))
    )
    assert decision.reason == "token_malformed"
