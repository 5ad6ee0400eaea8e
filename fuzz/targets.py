"""The fuzz oracles: one function per target, shared by hypothesis and atheris.

Each ``check_*`` function takes one input, runs the code under test, and raises
``AssertionError`` (or lets an unexpected exception escape) when a property does
not hold. The hypothesis tests in ``tests/fuzz/`` generate structured inputs for
them; ``fuzz/run.py`` drives them from atheris' coverage-guided byte strings.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

from google.protobuf.message import DecodeError

from authz.errors import (
    ContractViolation,
    DependencyError,
    InvalidPath,
    InvalidToken,
    MultipleCredentials,
)
from authz.identity.bearer import parse_authorization
from authz.model import Decision, Request
from authz.paths import canonicalize
from authz.policy.config import BodyLimits
from authz.transport.envoy_grpc import (
    CheckRequest,
    CheckResponse,
    encode_check_response,
    to_check_response,
    to_request,
)
from authz.validation.jsonbody import parse_json
from fuzz.fixtures import world

# --------------------------------------------------------------------------- 1. CheckRequest


def check_request_bytes(data: bytes) -> None:
    """Arbitrary bytes on the gRPC port: DecodeError, or a Request and a Decision."""
    try:
        check = CheckRequest.FromString(data)
    except DecodeError:
        return
    check_request(check)


def check_request(check: Any) -> Decision:
    """A decoded CheckRequest gets a Request, a Decision, a record and a response."""
    request = to_request(check)
    assert isinstance(request, Request)
    w = world()
    before = w.sink.records
    decision = w.run(w.engine.check(request))
    assert isinstance(decision, Decision)
    assert decision.reason != "internal_error", f"internal error for {request!r}"
    assert w.sink.records == before + 1, "no decision record"
    assert 200 <= decision.status < 600
    if decision.allowed and not decision.monitored:
        assert decision.status == 200
    check_response_encoding(decision)
    return decision


def check_response_encoding(decision: Decision) -> None:
    """The hand-built wire form parses back to what to_check_response builds."""
    wire = encode_check_response(decision)
    parsed = CheckResponse.FromString(wire)
    built = to_check_response(decision)
    assert parsed == built, f"wire form differs for {decision!r}"
    assert CheckResponse.FromString(built.SerializeToString()) == parsed


# --------------------------------------------------------------------------- 3. paths

_UNRESERVED_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def reference_decode(path: str) -> str:
    """Decode unreserved escapes, upper-case the hex of the others (RFC 3986 6.2.2)."""

    def one(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    return _UNRESERVED_ESCAPE.sub(one, path)


def reference_remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, step by step as the RFC writes it (input and output buffers)."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = "/" + inp[4:]
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp == "/..":
            inp = "/"
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            end = inp.find("/", start)
            end = len(inp) if end < 0 else end
            out += inp[:end]
            inp = inp[end:]
    return out


def reference_canonical(path: str) -> str:
    """The model: decode unreserved escapes, remove dot segments, merge slashes
    (Envoy's order: normalize_path, then merge_slashes)."""
    return re.sub("/+", "/", reference_remove_dot_segments(reference_decode(path))) or "/"


def check_path(target: str) -> None:
    """canonicalize: only InvalidPath; canonical output; idempotent; equals the model."""
    try:
        path, query = canonicalize(target)
    except InvalidPath:
        return
    assert query == target.partition("?")[2]
    raw = target.partition("?")[0]
    assert path.startswith("/")
    for bad in ("//", "/./", "/../", "\x00", "\\", "#", "?"):
        assert bad not in path, f"{bad!r} in {path!r} from {target!r}"
    assert not path.endswith(("/.", "/..")), path
    assert not re.search(r"/\.\.?;", path), f"dot segment with a parameter: {path!r}"
    upper = path.upper()
    assert "%2F" not in upper and "%5C" not in upper and "%00" not in upper, path
    assert canonicalize(path) == (path, ""), f"not idempotent: {target!r} -> {path!r}"
    assert canonicalize(path + "?" + query) == (path, query)
    expected = reference_canonical(raw)
    assert path == expected, f"{target!r}: canonicalize {path!r}, model {expected!r}"


# --------------------------------------------------------------------------- 4. JWT

JWT_ERRORS = (InvalidToken, MultipleCredentials, DependencyError)


def check_authorization(value: str, dedicated: bool) -> None:
    """parse_authorization: a token (one word, no comma), None, or a credential error."""
    try:
        token = parse_authorization(value, dedicated=dedicated)
    except (InvalidToken, MultipleCredentials):
        return
    if token is not None:
        assert token and "," not in token and token == token.strip()
        assert len(token.split()) == 1


def check_token(token: str, original: str | None = None) -> None:
    """verify and authenticate: only credential errors escape; accepted only if
    byte-identical to a real token (to ``original`` when given, which must pass)."""
    w = world()
    for call in ("verify", "authenticate"):
        try:
            if call == "verify":
                identity = w.run(w.provider.verify(token))[0]
            else:
                request = Request(
                    method="GET", path="/v1/orders", headers={"authorization": f"Bearer {token}"}
                )
                identity = w.run(w.provider.authenticate(request))
        except JWT_ERRORS:
            assert token != original, f"the original token was refused by {call}"
            continue
        if identity is None:  # authenticate abstains: the header held no bearer token
            assert call == "authenticate" and token != original
            continue
        # authenticate reads the token out of the header value (spaces around it go)
        seen = (
            token if call == "verify" else parse_authorization(f"Bearer {token}", dedicated=False)
        )
        assert seen in w.tokens.values(), f"forged token accepted by {call}: {token!r}"
        if original is not None:
            assert seen == original, f"a mutated token was accepted by {call}: {token!r}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


# --------------------------------------------------------------------------- 5. JSON bodies

BODY_LIMITS = BodyLimits(max_depth=16, max_members=2000)
BODY_REASONS = frozenset({"body_malformed", "body_duplicate_key", "body_limit_exceeded"})


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _DuplicateSeen
    return dict(pairs)


class _DuplicateSeen(Exception):
    pass


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _has_lone_surrogate(value: Any) -> bool:
    return any(re.search("[\ud800-\udfff]", s) for s in _strings(value))


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def same_json(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (Python's == says True == 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def check_json_body(data: bytes, limits: BodyLimits = BODY_LIMITS) -> None:
    """parse_json: only ContractViolation; accepted = json.loads; hostile forms refused."""
    try:
        value = parse_json(data, limits)
    except ContractViolation as exc:
        assert exc.reason in BODY_REASONS, exc.reason
        _check_refusal(data, exc, limits)
        return
    assert not data.startswith(b"\xef\xbb\xbf"), "BOM accepted"
    text = data.decode("utf-8")  # accepted bodies must be UTF-8
    reference = json.loads(text, object_pairs_hook=_pairs_no_duplicates)
    assert same_json(value, reference), f"{data!r}: {value!r} != {reference!r}"
    assert not _has_lone_surrogate(value), f"lone surrogate accepted: {data!r}"
    assert not _non_finite(value), f"non-finite number accepted: {data!r}"
    assert _depth(value) <= limits.max_depth


def _check_refusal(data: bytes, exc: ContractViolation, limits: BodyLimits) -> None:
    """A refusal is justified: the reference agrees the body is not acceptable."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    if text.startswith("\ufeff"):
        return
    try:
        reference = json.loads(
            text,
            object_pairs_hook=_pairs_no_duplicates,
            parse_constant=lambda name: float(name),
        )
    except _DuplicateSeen:
        return
    except (ValueError, RecursionError):
        return
    # json.loads takes the body: one of the strict rules must be why it was refused.
    if exc.reason == "body_limit_exceeded":
        if exc.detail.startswith("nesting"):
            assert _depth(reference) > limits.max_depth, f"depth refused wrongly: {data!r}"
        else:
            # the scan counts commas and brackets: at most three per value
            assert 3 * _members(reference) > limits.max_members, f"size refused: {data!r}"
        return
    assert exc.reason == "body_malformed", exc.reason
    # (json.loads also turns 1e999 into inf: _non_finite covers overflowing numbers)
    assert _has_lone_surrogate(reference) or _non_finite(reference), f"refused: {data!r}"


def _members(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_members(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_members(v) for v in value)
    return 1


# --------------------------------------------------------------------------- token mutations


class Chooser:
    """Where a mutation's choices come from: hypothesis' data or atheris' bytes."""

    def integer(self, lo: int, hi: int) -> int:  # inclusive
        raise NotImplementedError

    def blob(self, n: int) -> bytes:
        raise NotImplementedError

    def text(self, n: int) -> str:
        raise NotImplementedError

    def pick(self, items: list[Any]) -> Any:
        return items[self.integer(0, len(items) - 1)]


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ALGS = ["ES256", "RS256", "EdDSA", "HS256", "none", "None", "", "ES384", "PS256", "RS512", "ES256K"]
_B64CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def ecdsa_twin(token: str) -> str:
    """The other valid ES256 signature of the same message: (r, n - s)."""
    head, body, sig = token.split(".")
    raw = b64url_decode(sig)
    s = int.from_bytes(raw[32:], "big")
    return f"{head}.{body}.{b64url(raw[:32] + (P256_ORDER - s).to_bytes(32, 'big'))}"


def _random_json(c: Chooser, depth: int = 0) -> Any:
    kind = c.integer(0, 6 if depth < 2 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return c.pick([True, False])
    if kind == 2:
        return c.integer(-(2**63), 2**63)
    if kind == 3:
        return c.pick([0.5, 1e308, -0.0, 1e-300])
    if kind == 4:
        return c.text(12)
    if kind == 5:
        return [_random_json(c, depth + 1) for _ in range(c.integer(0, 3))]
    return {c.text(6): _random_json(c, depth + 1) for _ in range(c.integer(0, 3))}


def mutate_token(token: str, others: list[str], c: Chooser) -> str:
    """One hostile variant of ``token``: bit flips, re-encodings, forged headers ..."""
    op = c.integer(0, 11)
    if op and token.count(".") == 2:
        try:
            return _mutate_segments(token, others, c, op)
        except (ValueError, TypeError, AttributeError):  # an earlier mutation broke a segment
            pass
    # one character of the compact form replaced
    i = c.integer(0, max(0, len(token) - 1))
    replacement: str = c.pick([*_B64CHARS, ".", "=", "+", "/", " ", "\x00", "é"])
    return token[:i] + replacement + token[i + 1 :]


def _mutate_segments(token: str, others: list[str], c: Chooser, op: int) -> str:
    head, body, sig = token.split(".")
    segments = [head, body, sig]
    if op == 1:  # a bit flipped in a decoded segment, re-encoded canonically
        k = c.integer(0, 2)
        raw = bytearray(b64url_decode(segments[k]))
        if raw:
            i = c.integer(0, len(raw) - 1)
            raw[i] ^= 1 << c.integer(0, 7)
        segments[k] = b64url(bytes(raw))
        return ".".join(segments)
    if op == 2:  # a forged header: alg, kid, crit, typ chosen by the attacker
        original = json.loads(b64url_decode(head))
        original = original if isinstance(original, dict) else {}
        header: dict[str, Any] = {"alg": c.pick([*ALGS, c.text(6)])}
        kid = c.integer(0, 4)
        if kid == 0:
            header["kid"] = original.get("kid")
        elif kid == 1:
            header["kid"] = c.text(10)
        elif kid == 2:
            header["kid"] = c.integer(-5, 5)
        if c.integer(0, 3) == 0:
            header["crit"] = c.pick([["exp"], [], "b64", [c.text(4)]])
        if c.integer(0, 3) == 0:
            header[c.pick(["typ", "jku", "x5u", "jwk", "x5c", "b64", c.text(4)])] = _random_json(c)
        segments[0] = b64url(json.dumps(header).encode())
        return ".".join(segments)
    if op == 3:  # the payload re-encoded with a claim changed or added
        claims = json.loads(b64url_decode(body))
        claims = claims if isinstance(claims, dict) else {}
        claim = c.pick(["sub", "aud", "iss", "exp", "nbf", "iat", "scope", c.text(4)])
        claims[claim] = _random_json(c)
        segments[1] = b64url(json.dumps(claims).encode())
        return ".".join(segments)
    if op == 4:  # the same JSON, re-serialised (other spacing or key order)
        k = c.integer(0, 1)
        value = json.loads(b64url_decode(segments[k]))
        text = json.dumps(
            value,
            separators=c.pick([(",", ":"), (", ", ": "), (",", ": ")]),
            sort_keys=bool(c.integer(0, 1)),
        )
        segments[k] = b64url(text.encode())
        return ".".join(segments)
    if op == 5:  # non-canonical base64url: unused low bits of the last character set
        k = c.integer(0, 2)
        seg = segments[k]
        if len(seg) % 4 in (2, 3):
            mask = 0x0F if len(seg) % 4 == 2 else 0x03
            index = _B64CHARS.index(seg[-1]) | c.integer(1, mask)
            segments[k] = seg[:-1] + _B64CHARS[index]
        return ".".join(segments)
    if op == 6:  # padding, the standard alphabet, or whitespace in a segment
        k = c.integer(0, 2)
        seg = segments[k]
        segments[k] = c.pick(
            [
                seg + "=",
                seg + "==",
                seg.replace("-", "+").replace("_", "/"),
                " " + seg,
                seg + "\n",
                seg.upper(),
            ]
        )
        return ".".join(segments)
    if op == 7 and others:  # a segment taken from another (valid) token
        other = c.pick(others).split(".")
        k = c.integer(0, 2)
        segments[k] = other[k]
        return ".".join(segments)
    if op == 8:  # segments cut, extended, dropped or duplicated
        k = c.integer(0, 2)
        seg = segments[k]
        cut = c.integer(0, len(seg))
        choice = c.integer(0, 3)
        if choice == 0:
            segments[k] = seg[:cut]
        elif choice == 1:
            segments[k] = seg + c.pick(list(_B64CHARS))
        elif choice == 2:
            del segments[k]
        else:
            segments.insert(k, seg)
        return ".".join(segments)
    if op == 9:  # an unsigned or HMAC-signed copy
        segments[0] = b64url(json.dumps({"alg": c.pick(["none", "HS256"]), "typ": "JWT"}).encode())
        segments[2] = c.pick(["", b64url(c.blob(32))])
        return ".".join(segments)
    if op == 10:  # the signature replaced by random bytes of a plausible length
        segments[2] = b64url(c.blob(c.pick([0, 1, 32, 64, 65, 256, 300])))
        return ".".join(segments)
    # op 11 (and 7 without others): raw bytes inserted somewhere
    i = c.integer(0, len(token))
    return token[:i] + c.text(4) + token[i:]


def check_mutated_token(original: str, mutated: str) -> None:
    """A mutation is refused unless it is byte-identical to the original.

    The one exception is an ES256 token's (r, n - s) twin, which ECDSA itself
    accepts (finding F4 in fuzz/README.md): same header, claims and key.
    """
    tokens = world().tokens
    if mutated == original:
        check_token(mutated, original)
        return
    if original == tokens["ES256"] and mutated == ecdsa_twin(original):
        return
    if mutated in tokens.values():
        return  # a segment swap rebuilt another valid token
    check_token(mutated, original)


# ------------------------------------------------------------------ structured CheckRequests

PATHS = [
    "/healthz",
    "/v1/orders",
    "/v1/orders/42",
    "/v1/files/a/b.txt",
    "/v1/files/",
    "/internal/metrics",
    "/v1/beta",
    "/admin",
    "/",
    "/v1/orders/export",
]
PATH_TWISTS = [
    "//",
    "/./",
    "/../",
    "/..",
    "/.",
    "%2e",
    "%2E%2e",
    "%2F",
    "%5c",
    "%00",
    "%41",
    "%zz",
    "%",
    "?dry_run=true",
    "?access_token=x",
    "#frag",
    "\\",
    " ",
    "\x7f",
    "é",
    ";x",
    "~",
    "%7E",
    "%C3%A9",
    "%C0%AF",
    "/",
]
HOSTS = [
    "shop.example",
    "admin.fuzz.example",
    "ADMIN.FUZZ.EXAMPLE:443",
    "",
    "[::1]:8080",
    "admin.fuzz.example.",
    "x" * 300,
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "", "get", "CONNECT"]
SPOOFED = ["x-authz-subject", "x-authz-scopes", "x-authz-decision-id", "x-authz-peer-principal"]


def twist_path(path: str, c: Chooser) -> str:
    for _ in range(c.integer(0, 3)):
        i = c.integer(0, len(path))
        twist = c.pick([*PATH_TWISTS, c.text(3)])
        path = path[:i] + twist + path[i:]
    return path


def _credential(c: Chooser) -> dict[str, str]:
    from fuzz.fixtures import API_KEY

    w = world()
    tokens = list(w.tokens.values())
    headers: dict[str, str] = {}
    kind = c.integer(0, 6)
    if kind == 1:
        headers["authorization"] = "Bearer " + c.pick(tokens)
    elif kind == 2:
        token = c.pick(tokens)
        headers["authorization"] = "Bearer " + mutate_token(token, tokens, c)
    elif kind == 3:
        headers["authorization"] = c.pick(["Basic eDp5", "Bearer", "bearer  a.b.c", "", c.text(20)])
    elif kind == 4:
        headers["x-api-key"] = c.pick([API_KEY, API_KEY + "x", "", c.text(20)])
    elif kind == 5:
        headers["authorization"] = "Bearer " + c.pick(tokens)
        headers["x-api-key"] = API_KEY
    elif kind == 6:  # a validly signed token whose claims hold odd (but valid) text
        from fuzz.fixtures import mint

        odd = ["", "a\r\nx-authz-scopes: admin", "\x00", "é", "\U0001f600", "x" * 5000, c.text(20)]
        scopes: Any = c.pick([c.pick(odd), [c.pick(odd), "orders:read"], 7, None])
        headers["authorization"] = "Bearer " + mint(
            c.pick(list(w.keys.values())),
            subject=c.pick(odd) or "s",
            scopes=scopes if isinstance(scopes, list | str) else (),
            extra_claims={"tenant": c.pick(odd), "scope": scopes} if c.integer(0, 1) else None,
        )
    return headers


def structured_check(c: Chooser) -> Any:
    """A CheckRequest as Envoy could send it, with hostile parts chosen by ``c``."""
    from authz.transport.envoy_grpc import build_check_request

    method = c.pick([*METHODS, c.text(5)])
    path = twist_path(c.pick(PATHS), c) if c.integer(0, 5) else c.text(30)
    headers = _credential(c)
    for _ in range(c.integer(0, 3)):
        name = c.pick([*SPOOFED, "content-type", "x-request-id", "cookie", c.text(8).lower()])
        headers[name] = c.pick(
            ["application/json", "application/x-www-form-urlencoded", c.text(16)]
        )
    body = c.pick(
        [
            b"",
            b'{"items": []}',
            b'{"items": [{"sku": "a", "qty": 1}]}',
            b"items=1",
            b'{"a": 1, "a": 2}',
            c.blob(40),
        ]
    )
    check = build_check_request(
        method=method,
        path=path,
        host=c.pick([*HOSTS, c.text(10)]),
        headers=headers,
        body=body,
        principal=c.pick(
            ["", "spiffe://td.local/ns/ops/sa/prometheus", "spiffe://evil.local/x", c.text(20)]
        ),
        certificate=c.pick(["", c.text(40)]),
        request_id=c.pick(["", "req-1", c.text(10)]),
        scheme=c.pick(["http", "https", ""]),
    )
    http = check.attributes.request.http
    if c.integer(0, 3) == 0:  # Envoy's header_map form (raw_value bytes) instead of the map
        for key, value in list(http.headers.items()):
            option = http.header_map.headers.add()
            option.key = key.upper() if c.integer(0, 1) else key
            # raw_value is bytes: sometimes not UTF-8 at all
            raw = value.encode("utf-8", "surrogatepass")
            option.raw_value = raw if c.integer(0, 3) else raw + c.blob(6) + b"\xff"
        http.headers.clear()
        if c.integer(0, 1):
            option = http.header_map.headers.add()
            option.key = "x-raw"
            option.raw_value = c.blob(8)
    if c.integer(0, 4) == 0:
        http.fragment = c.text(6)
    return check


class RandomChooser(Chooser):
    """Choices from a seeded ``random.Random`` (seed corpora, reproducible)."""

    def __init__(self, seed: int) -> None:
        import random

        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def blob(self, n: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, n))

    def text(self, n: int) -> str:
        alphabet = "abcXYZ019-._~/%?#=&é\u2028 \t"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, n)))
