"""Policy loading: the example loads; every kind of bad file is reported with its location."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from authz.errors import PolicyError
from authz.policy.config import ApiKeyProviderConfig, JwtProviderConfig, MtlsProviderConfig
from authz.policy.loader import load_policy, parse_expiry

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "policy.yaml"
DIGEST = "cdb261f25818c0b9927e93c353bdc05dddfa18e4ede433d264e910cc94b47aeb"

PROVIDERS = f"""\
providers:
  keys:
    type: api_key
    keys:
      - id: k1
        sha256: {DIGEST}
        owner: team
        expires: "2030-01-01"
  mesh:
    type: mtls
    trust_domains: [td.local]
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def at(path: Path, needle: str, occurrence: int = 1) -> str:
    """file:line:column of the start of the n-th occurrence of ``needle`` in the file."""
    text = path.read_text("utf-8")
    index = -1
    for _ in range(occurrence):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"{path}:{line}:{column}"


def problems(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.reason == "invalid_policy"
    return info.value.problems


def only_problem(path: Path) -> tuple[str, str]:
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- valid


def test_example_policy_loads() -> None:
    config = load_policy(EXAMPLE)
    assert config.version.startswith("sha256:")
    assert config.mode == "enforce"
    assert config.undeclared_routes == "deny"
    assert config.realm == "orders"
    kinds = {p.name: type(p) for p in config.providers}
    assert kinds == {
        "dev": JwtProviderConfig,
        "mesh": MtlsProviderConfig,
        "legacy": ApiKeyProviderConfig,
    }
    legacy = config.provider("legacy")
    assert isinstance(legacy, ApiKeyProviderConfig)
    assert legacy.keys[0].sha256 == DIGEST
    assert legacy.keys[0].expires_at == parse_expiry("2030-01-01T00:00:00Z")
    names = [r.name for r in config.routes]
    assert names[0] == "health" and "mesh-sync" in names
    sync = next(r for r in config.routes if r.name == "mesh-sync")
    assert sync.spiffe_ids == ()
    assert sync.spiffe_id_prefixes == ("spiffe://demo.local/ns/sync/",)
    metrics = next(r for r in config.routes if r.name == "metrics")
    assert metrics.spiffe_ids == ("spiffe://demo.local/ns/ops/sa/prometheus",)
    export = next(r for r in config.routes if r.name == "export-orders")
    assert export.claims == (("tenant", ("acme",)),)
    assert next(r for r in config.routes if r.name == "create-order").strip_credential
    assert export.location.startswith(f"{EXAMPLE}:")


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    copy = tmp_path / "policy.yaml"
    shutil.copy(EXAMPLE, copy)
    shutil.copy(EXAMPLE.parent / "openapi.yaml", tmp_path / "openapi.yaml")
    first = load_policy(copy).version
    assert load_policy(copy).version == first
    assert load_policy(EXAMPLE).version == first  # same bytes, same version, any path
    copy.write_text(copy.read_text("utf-8") + "\n# a comment changes the file\n", "utf-8")
    second = load_policy(copy).version
    assert second != first
    assert second.startswith("sha256:")
    # the OpenAPI document the policy names is part of it
    openapi = tmp_path / "openapi.yaml"
    openapi.write_text(openapi.read_text("utf-8") + "\n# changed\n", "utf-8")
    assert load_policy(copy).version not in (first, second)


def test_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "routes:\n  - {name: r, path: /x, methods: [GET], public: true}\n")
    config = load_policy(path)
    assert (config.mode, config.undeclared_routes, config.realm) == ("enforce", "deny", "authz")
    assert config.headers.subject == "x-authz-subject"
    assert config.routes[0].mode is None
    assert config.routes[0].hosts == ()


def test_unquoted_dates_and_custom_headers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        headers: {{subject: x-user, scopes: x-user-scopes}}
        providers:
          keys:
            type: api_key
            header: x-key
            keys:
              - {{id: k1, sha256: {DIGEST}, owner: o, expires: 2030-01-01}}
              - {{id: k2, sha256: {"ab" * 32}, owner: o, expires: "2030-01-01T12:00:00+02:00"}}
        routes:
          - name: r
            path: /x
            methods: [GET]
            hosts: [API.Example.com]
            providers: [keys]
        """,
    )
    config = load_policy(path)
    assert config.headers.subject == "x-user"
    assert config.headers.scopes == "x-user-scopes"
    keys = config.provider("keys")
    assert isinstance(keys, ApiKeyProviderConfig)
    assert keys.header == "x-key"
    assert keys.keys[0].expires_at == 1893456000.0  # 2030-01-01T00:00:00Z
    assert keys.keys[1].expires_at == 1893456000.0 + 12 * 3600 - 2 * 3600
    assert config.routes[0].hosts == ("api.example.com",)


# --------------------------------------------------------------------------- schema errors

ROUTE_OK = "  - {name: ok, path: /ok, methods: [GET], public: true}\n"


@pytest.mark.parametrize(
    ("text", "needle", "message"),
    [
        # a bad enum value is located at the value itself
        ("routes:\n  - {name: r, path: /x, methods: [GET, FETCH], public: true}\n",
         "FETCH", "$.routes[0].methods[1]: must be one of GET"),
        ("mode: shadow\nroutes: []\n", "shadow", "$.mode: must be one of enforce, monitor"),
        ("undeclared_routes: allow\nroutes: []\n", "allow", "$.undeclared_routes: must be one of"),
        ("routes:\n  - {name: r, path: /x, methods: [GET], public: true, mode: shadow}\n",
         "shadow", "$.routes[0].mode: must be one of"),
        # wrong types
        ("routes: {}\n", "{}", "$.routes: {} is not of type 'array'"),
        ("routes:\n  - {name: r, path: /x, methods: GET, public: true}\n",
         "GET", "$.routes[0].methods: 'GET' is not of type 'array'"),
        ("routes:\n  - {name: r, path: /x, methods: [GET], public: 'yes'}\n",
         "'yes'", "$.routes[0].public: 'yes' is not of type 'boolean'"),
        # patterns
        ("routes:\n  - {name: r, path: x, methods: [GET], public: true}\n",
         "x,", "$.routes[0].path: 'x' does not match"),
        ("routes:\n  - {name: -bad, path: /x, methods: [GET], public: true}\n",
         "-bad", "$.routes[0].name: '-bad' does not match"),
        ("headers: {subject: X-User}\nroutes: []\n", "X-User", "$.headers.subject: 'X-User' does not match"),
        ('realm: \'a"b\'\nroutes: []\n', "'a", "$.realm: "),
        # missing required fields: located at the object that lacks them
        ("routes:\n  - {name: r, path: /x, public: true}\n", "{name", "$.routes[0]: 'methods' is a required property"),
        ("version: 1\n", "version", "$: 'routes' is a required property"),
        # empty method list, duplicates
        ("routes:\n  - {name: r, path: /x, methods: [], public: true}\n", "[]", "$.routes[0].methods: [] should be non-empty"),
        ("routes:\n  - {name: r, path: /x, methods: [GET, GET], public: true}\n", "[GET", "has non-unique elements"),
        ("version: 2\nroutes: []\n", "2", "$.version: 1 was expected"),
        # providers
        ("providers:\n  p: {type: saml}\nroutes: []\n", "saml", "$.providers.p.type: must be one of jwt, mtls, api_key"),
        ("providers:\n  p: {type: mtls, trust_domains: [TD.Local]}\nroutes: []\n", "TD.Local", "$.providers.p.trust_domains[0]: 'TD.Local' does not match"),
        ("providers:\n  p: {type: mtls}\nroutes: []\n", "{type", "$.providers.p: 'trust_domains' is a required property"),
        ("providers:\n  p: {type: api_key, keys: [{id: k, sha256: ABC, owner: o, expires: '2030-01-01'}]}\nroutes: []\n",
         "ABC", "$.providers.p.keys[0].sha256: 'ABC' does not match"),
        ("providers:\n  p: {type: api_key, keys: [{id: k, sha256: " + DIGEST + ", owner: o}]}\nroutes: []\n",
         "{id", "$.providers.p.keys[0]: 'expires' is a required property"),
        ("providers:\n  p: {type: jwt, issuer: i, audiences: [a], jwks_uri: ftp://x}\nroutes: []\n",
         "ftp", "$.providers.p.jwks_uri: 'ftp://x' does not match"),
        ("providers:\n  p: {type: jwt, issuer: i, audiences: [a], leeway: 5 minutes}\nroutes: []\n",
         "5 minutes", "$.providers.p.leeway: invalid value"),
        # HMAC algorithms are refused for issuers
        ("providers:\n  p: {type: jwt, issuer: i, audiences: [a], jwks_uri: 'https://i/k', algorithms: [RS256, HS256]}\nroutes: []\n",
         "HS256", "$.providers.p.algorithms[1]: must be one of RS256"),
        ("providers:\n  p: {type: jwt, issuer: i, audiences: [a], jwks_uri: 'https://i/k', algorithms: [none]}\nroutes: []\n",
         "none]", "$.providers.p.algorithms[0]: must be one of"),
        ("providers: {m: {type: mtls, trust_domains: [td]}}\nroutes:\n  - {name: r, path: /x, methods: [GET], providers: [m], spiffe_ids: ['https://x']}\n",
         "'https", "$.routes[0].spiffe_ids[0]: 'https://x' does not match"),
        ("providers: {m: {type: mtls, trust_domains: [td]}}\nroutes:\n  - {name: r, path: /x, methods: [GET], providers: [m], credentials: first}\n",
         "first}", "$.routes[0].credentials: must be one of exclusive, first_match"),
        # a top-level list is not a policy
        ("- a\n", "- a", "$: ['a'] is not of type 'object'"),
    ],
)  # fmt: skip
def test_schema_errors(tmp_path: Path, text: str, needle: str, message: str) -> None:
    path = write(tmp_path, text)
    location, got = only_problem(path)
    assert location == at(path, needle)
    assert got.startswith(message) or message in got, got


def test_route_host_with_port_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes:\n  - {name: r, path: /x, methods: [GET], public: true, hosts: [api.example.com:8443]}\n",
    )
    location, message = only_problem(path)
    assert location == at(path, "api.example.com:8443")
    assert message.startswith("$.routes[0].hosts[0]:")


def test_unknown_field_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes:\n  - name: r\n    path: /x\n    methods: [GET]\n    public: true\n    scope: [a]\n",
    )
    location, message = only_problem(path)
    assert "$.routes[0]: unknown field 'scope'" in message
    assert location == at(path, "scope")


def test_unknown_field_is_located_at_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, "# comment\nversion: 1\nroutes: []\nbogus: 1\n")
    location, _ = only_problem(path)
    assert location == at(path, "bogus")


def test_all_schema_errors_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        mode: shadow
        routes:
          - {name: a, path: /a, methods: [FETCH], public: true}
          - {name: b, path: b, methods: [GET], public: true}
        """,
    )
    found = problems(path)
    assert [loc for loc, _ in found] == [
        at(path, "shadow"),
        at(path, "FETCH"),
        at(path, "b, methods"),
    ]


# --------------------------------------------------------------------------- semantic errors


@pytest.mark.parametrize(
    ("routes", "needle", "message"),
    [
        ("  - {name: r, path: /x, methods: [GET], providers: [nobody]}\n",
         "nobody", "$.routes[0].providers[0]: no provider named 'nobody'"),
        ("  - {name: r, path: /x, methods: [GET], public: true, providers: [keys]}\n",
         "{name: r", "$.routes[0]: a public route takes no providers"),
        ("  - {name: r, path: /x, methods: [GET], public: true, claims: {t: x}}\n",
         "{name: r", "$.routes[0]: a public route takes no providers"),
        ("  - {name: r, path: /x, methods: [GET]}\n",
         "{name: r", "$.routes[0]: a route needs providers (or public: true)"),
        ("  - {name: r, path: /x, methods: [GET], providers: []}\n",
         "{name: r", "$.routes[0]: a route needs providers (or public: true)"),
        ("  - {name: r, path: /x, methods: [GET], providers: [keys], spiffe_ids: ['spiffe://td.local/a']}\n",
         "['spiffe", "$.routes[0].spiffe_ids: spiffe_ids need an mtls provider on the route"),
        ("  - {name: r, path: /x, methods: [GET], providers: [mesh], scopes: [a]}\n",
         "[a]", "$.routes[0].scopes: scopes need a jwt or api_key provider"),
        ("  - {name: r, path: '/x/y{z}', methods: [GET], public: true}\n",
         "'/x/y{z}'", "$.routes[0].path: segment 'y{z}': a parameter must fill the whole segment"),
        ("  - {name: r, path: '/{a}/{a}', methods: [GET], public: true}\n",
         "'/{a}", "$.routes[0].path: parameter {a} appears twice"),
        ("  - {name: r, path: '/{r=**}/x', methods: [GET], public: true}\n",
         "'/{r", "$.routes[0].path: {r=**} must be the last segment"),
        ("  - {name: r, path: /a, methods: [GET], public: true}\n  - {name: r, path: /b, methods: [GET], public: true}\n",
         "r, path: /b", "$.routes[1].name: duplicate route name 'r'"),
        ("  - {name: a, path: '/v/{x}', methods: [GET, POST], public: true}\n  - {name: b, path: '/v/{y}', methods: [POST], public: true}\n",
         "{name: b", "$.routes[1]: POST /v/{y} is already declared by route 'a'"),
    ],
)  # fmt: skip
def test_semantic_errors(tmp_path: Path, routes: str, needle: str, message: str) -> None:
    path = write(tmp_path, PROVIDERS + "routes:\n" + routes)
    location, got = only_problem(path)
    assert location == at(path, needle)
    assert got.startswith(message), got


def test_same_path_and_method_on_different_hosts_is_fine(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes:\n"
        "  - {name: a, path: /x, methods: [GET], public: true, hosts: [a.example.com]}\n"
        "  - {name: b, path: /x, methods: [GET], public: true, hosts: [b.example.com]}\n"
        "  - {name: c, path: /x, methods: [GET], public: true}\n",
    )
    assert [r.name for r in load_policy(path).routes] == ["a", "b", "c"]


def test_jwks_file_missing(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "providers:\n  idp: {type: jwt, issuer: i, audiences: [a], jwks_file: keys/jwks.json}\n"
        "routes: []\n",
    )
    location, message = only_problem(path)
    assert location == at(path, "keys/jwks.json")
    assert message == f"$.providers.idp.jwks_file: no such file: {tmp_path / 'keys/jwks.json'}"
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text('{"keys": []}')
    idp = load_policy(path).provider("idp")
    assert isinstance(idp, JwtProviderConfig)
    assert idp.jwks_file == str((tmp_path / "keys" / "jwks.json").resolve())  # relative to the file


def test_two_key_sources(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "providers:\n  idp: {type: jwt, issuer: i, audiences: [a], jwks_uri: 'https://i/k', discovery: true}\n"
        "routes: []\n",
    )
    location, message = only_problem(path)
    assert location == at(path, "{type: jwt")
    assert "give one key source" in message


@pytest.mark.parametrize("expires", ['"next year"', '"2030-13-01"', '""'])
def test_bad_expiry(tmp_path: Path, expires: str) -> None:
    text = PROVIDERS.replace('"2030-01-01"', expires) + "routes: []\n"
    path = write(tmp_path, text)
    location, message = only_problem(path)
    assert location == at(path, expires)
    assert message == "$.providers.keys.keys[0].expires: not an RFC 3339 date or date-time"


def test_unquoted_impossible_date_is_a_located_error(tmp_path: Path) -> None:
    text = PROVIDERS.replace('"2030-01-01"', "2030-02-30") + "routes: []\n"
    path = write(tmp_path, text)
    location, _ = only_problem(path)
    assert location == at(path, "2030-02-30")


def test_duplicate_key_in_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes:\n  - name: a\n    path: /a\n    name: b\n    methods: [GET]\n    public: true\n",
    )
    location, message = only_problem(path)
    assert location == at(path, "name: b")
    assert message == "$.routes[0]: duplicate key 'name'"


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "routes: []\nmode: enforce\nroutes: []\n")
    location, message = only_problem(path)
    assert location == at(path, "routes", 2)
    assert "duplicate key 'routes'" in message


def test_non_string_key(tmp_path: Path) -> None:
    path = write(tmp_path, "routes: []\n1: x\n")
    location, message = only_problem(path)
    assert location == at(path, "1: x")
    assert "keys must be strings" in message


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "routes:\n  - name: a\n   path: /a\n")
    location, message = only_problem(path)
    assert location.startswith(f"{path}:3:")
    assert message.startswith("invalid YAML:")


def test_invalid_yaml_unclosed_flow(tmp_path: Path) -> None:
    path = write(tmp_path, "routes: [\n")
    location, message = only_problem(path)
    assert location == f"{path}:2:1"
    assert message.startswith("invalid YAML:")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert only_problem(path) == (str(path), "the policy file is empty")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"routes: []\nrealm: caf\xe9\n")
    location, message = only_problem(path)
    assert location == str(path)
    assert message == "the file is not UTF-8 (byte 21)"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    location, message = only_problem(path)
    assert location == str(path)
    assert message.startswith("cannot read the policy file")


def test_yaml_merge_key_does_not_crash(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes:\n  - &base {name: a, path: /a, methods: [GET], public: true}\n"
        "  - <<: *base\n    name: b\n    path: /b\n",
    )
    with contextlib.suppress(PolicyError):  # a located error is acceptable too
        load_policy(path)


def test_unknown_yaml_tag_is_a_located_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes:\n  - {name: !!python/name:os.system r, path: /a, methods: [GET], public: true}\n",
    )
    location, _ = only_problem(path)
    assert location == at(path, "!!python")


def test_all_semantic_problems_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        PROVIDERS.replace('"2030-01-01"', '"soon"')
        + """\
routes:
  - {name: a, path: /a, methods: [GET], providers: [nobody]}
  - {name: b, path: /b, methods: [GET]}
  - {name: a, path: /c, methods: [GET], public: true}
  - {name: d, path: '/d/x{y}', methods: [GET], public: true}
""",
    )
    found = problems(path)
    assert sorted(loc for loc, _ in found) == sorted(
        [
            at(path, '"soon"'),
            at(path, "nobody"),
            at(path, "{name: b"),
            at(path, "a, path: /c"),
            at(path, "'/d/x{y}'"),
        ]
    )


def test_schema_and_semantic_problems_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mode: shadow\nroutes:\n  - {name: a, path: /a, methods: [GET], providers: [nobody]}\n",
    )
    locations = [loc for loc, _ in problems(path)]
    assert at(path, "shadow") in locations
    assert at(path, "nobody") in locations


# --------------------------------------------------------------------------- authz validate


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_validate_cli_valid() -> None:
    result = validate(EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert load_policy(EXAMPLE).version in result.stdout
    assert result.stderr == ""


def test_validate_cli_invalid(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        mode: shadow
        routes:
          - {name: a, path: /a, methods: [FETCH], public: true}
        """,
    )
    result = validate(path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(at(path, "shadow") + ": $.mode: must be one of")
    assert lines[1].startswith(at(path, "FETCH") + ": $.routes[0].methods[0]: must be one of")
    assert lines[2] == f"{path}: invalid (2 problems)"
    assert "Traceback" not in result.stderr


def test_validate_cli_semantic(tmp_path: Path) -> None:
    path = write(tmp_path, "routes:\n  - {name: a, path: /a, methods: [GET], providers: [x]}\n")
    result = validate(path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{at(path, 'x]')}: $.routes[0].providers[0]: no provider named 'x'",
        f"{path}: invalid (1 problem)",
    ]
