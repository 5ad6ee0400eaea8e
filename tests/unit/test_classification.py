"""Data classification: each route's class, and every minimum control checked at load
with its place in the file (positive and negative for each rule of the table)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from authz.cli import main
from authz.errors import PolicyError
from authz.policy.classification import (
    CLASSES,
    RULES,
    Controls,
    check_route,
    effective_class,
    field_classes,
    highest,
)
from authz.policy.config import (
    ApiKeyProviderConfig,
    JwtProviderConfig,
    MtlsProviderConfig,
    PolicyConfig,
    RouteConfig,
)
from authz.policy.loader import load_policy
from authz.policy.ratelimit_config import RuleConfig

DIGEST = "cdb261f25818c0b9927e93c353bdc05dddfa18e4ede433d264e910cc94b47aeb"
HEAD = f"""\
providers:
  dev: {{type: jwt, issuer: "https://issuer.example", audiences: [api], discovery: true}}
  mesh: {{type: mtls, trust_domains: [td.local]}}
  keys:
    type: api_key
    keys:
      - {{id: k1, sha256: {DIGEST}, owner: team, expires: "2030-01-01"}}
"""
AUDIT = "decision_log: {on_failure: deny}\n"
SUBJECT_LIMIT = "    rate_limits: [{name: per-caller, rate: 10/s, key: [subject]}]\n"


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def at(path: Path, needle: str) -> str:
    text = path.read_text("utf-8")
    index = text.index(needle)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"{path}:{line}:{column}"


def problems(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return list(info.value.problems)


def route(body: str, *, head: str = HEAD, extra: str = AUDIT) -> str:
    return head + extra + "routes:\n" + body


# --------------------------------------------------------------------------- classes


def test_classes_rank_and_default() -> None:
    assert CLASSES == ("public", "internal", "confidential", "pii", "regulated")
    assert highest("internal", "pii", "confidential") == "pii"
    assert highest("", "bogus") == ""
    assert effective_class("", False, ()) == "internal"
    assert effective_class("", True, ()) == "public"
    assert effective_class("public", False, (("/a", "confidential"),)) == "confidential"
    assert effective_class("regulated", False, (("/a", "pii"),)) == "regulated"


def test_undeclared_routes_get_the_default(tmp_path: Path) -> None:
    config = load_policy(
        write(
            tmp_path,
            route(
                "  - {name: ping, path: /ping, methods: [GET], public: true}\n"
                "  - {name: a, path: /a, methods: [GET], providers: [dev]}\n"
                "  - {name: b, path: /b, methods: [GET], providers: [dev], data_class: public}\n"
            ),
        )
    )
    got = [(r.name, r.data_class, r.declared_data_class) for r in config.routes]
    assert got == [("ping", "public", ""), ("a", "internal", ""), ("b", "public", "public")]


def test_body_fields_raise_the_class(tmp_path: Path) -> None:
    config = load_policy(
        write(
            tmp_path,
            route(
                """\
                  - name: signup
                    path: /signup
                    methods: [POST]
                    providers: [dev]
                    data_class: internal
                    rate_limits: [{name: per-caller, rate: 1/s, key: [subject]}]
                    contract:
                      body:
                        type: object
                        properties:
                          email: {type: string, x-data-class: pii}
                          plan: {type: string, x-data-class: confidential}
                          kids:
                            type: array
                            items: {$ref: "#/$defs/Kid"}
                        $defs:
                          Kid:
                            type: object
                            properties:
                              name: {type: string, x-data-class: pii}
                """
            ),
        )
    )
    [signup] = config.routes
    assert signup.declared_data_class == "internal"
    assert signup.data_class == "pii"  # the highest of its own and its fields'
    assert signup.field_data_classes == (
        ("/email", "pii"),
        ("/kids/*/name", "pii"),
        ("/plan", "confidential"),
    )


def test_a_field_class_that_is_no_class_is_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        route(
            """\
              - name: a
                path: /a
                methods: [POST]
                providers: [dev]
                contract:
                  body:
                    type: object
                    properties:
                      email: {type: string, x-data-class: secret}
            """
        ),
    )
    [(where, message)] = problems(path)
    assert where == at(path, "secret")
    assert message == (
        "$.routes[0].contract.body.properties.email.x-data-class: "
        "x-data-class must be one of public, internal, confidential, pii, regulated"
    )


def test_a_route_class_that_is_no_class_is_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        route("  - {name: a, path: /a, methods: [GET], providers: [dev], data_class: top}\n"),
    )
    [(where, message)] = problems(path)
    assert where == at(path, "top}")
    assert message.startswith("$.routes[0].data_class: must be one of public, internal")


# --------------------------------------------------------------------------- rules


def test_a_public_route_carries_public_data_only(tmp_path: Path) -> None:
    ok = "  - {name: a, path: /a, methods: [GET], public: true, data_class: public}\n"
    assert load_policy(write(tmp_path, route(ok))).routes[0].data_class == "public"
    path = write(
        tmp_path,
        route(
            "  - {name: ok, path: /ok, methods: [GET], public: true}\n"
            "  - name: a\n    path: /a\n    methods: [GET]\n    public: true\n"
            "    data_class: confidential\n"
        ),
    )
    [(where, message)] = problems(path)
    assert where == at(path, "confidential")
    assert message.startswith(
        "$.routes[1].data_class: a public route (public: true) serves anyone, so it "
        "carries public data only, not confidential: give it providers"
    )


def test_a_public_route_with_a_pii_field_names_the_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        route(
            """\
              - name: signup
                path: /signup
                methods: [POST]
                public: true
                rate_limits: [{name: per-address, rate: 1/s, key: [client_address]}]
                contract:
                  body:
                    type: object
                    properties:
                      email: {type: string, x-data-class: pii}
            """
        ),
    )
    found = problems(path)
    assert found == [
        (
            at(path, "name: signup"),
            "$.routes[0].data_class: a public route (public: true) serves anyone, so it "
            "carries public data only, not pii (from body field /email): give it "
            "providers, or classify its data public",
        )
    ]


def test_pii_takes_no_api_key_provider(tmp_path: Path) -> None:
    good = route(
        "  - name: a\n    path: /a\n    methods: [GET]\n    providers: [dev, mesh]\n"
        "    data_class: pii\n" + SUBJECT_LIMIT
    )
    assert load_policy(write(tmp_path, good)).routes[0].data_class == "pii"
    path = write(
        tmp_path,
        route(
            "  - name: a\n    path: /a\n    methods: [GET]\n    providers: [dev, keys]\n"
            "    data_class: pii\n" + SUBJECT_LIMIT
        ),
    )
    [(where, message)] = problems(path)
    assert where == at(path, "keys]")
    assert message.startswith(
        "$.routes[0].providers[1]: a pii route takes no API-key provider ('keys')"
    )


@pytest.mark.parametrize(
    ("providers", "key"),
    [
        ("dev, mesh", "subject"),  # tells every caller apart
        ("mesh", "route, spiffe_id"),  # an mTLS caller is its SPIFFE ID
        ("dev", "'claim:client_id'"),  # the claim the operator names
        ("dev, mesh", "spiffe_id, 'claim:client_id'"),  # each kind by its own part
    ],
)
def test_pii_with_a_rate_limit_per_identity_loads(tmp_path: Path, providers: str, key: str) -> None:
    text = route(
        f"  - name: a\n    path: /a\n    methods: [GET]\n    providers: [{providers}]\n"
        f"    data_class: pii\n    rate_limits: [{{name: r, rate: 10/s, key: [{key}]}}]\n"
    )
    assert load_policy(write(tmp_path, text)).routes[0].data_class == "pii"


def test_a_global_rule_per_identity_counts(tmp_path: Path) -> None:
    text = route(
        "  - {name: a, path: /a, methods: [GET], providers: [dev], data_class: pii}\n",
        extra=AUDIT + "rate_limits:\n  rules: [{name: g, rate: 100/s, key: [subject]}]\n",
    )
    assert load_policy(write(tmp_path, text)).routes[0].data_class == "pii"


@pytest.mark.parametrize(
    "limits",
    [
        "",  # none at all
        "    rate_limits: [{name: r, rate: 10/s, key: [client_address]}]\n",  # per address
        "    rate_limits: [{name: r, rate: 10/s, key: [subject], shadow: true}]\n",  # limits nothing
        "    rate_limits: [{name: r, concurrency: 2, key: [subject]}]\n",  # a cap, not a rate
        "    rate_limits: [{name: r, rate: 10/s, key: [issuer]}]\n",  # one bucket per issuer
        # a JWT caller's spiffe_id is the connection's peer; its api_key is ""
        "    rate_limits: [{name: r, rate: 10/s, key: [spiffe_id]}]\n",
        "    rate_limits: [{name: r, rate: 10/s, key: [api_key]}]\n",
    ],
)
def test_pii_without_a_rate_limit_per_identity_is_located(tmp_path: Path, limits: str) -> None:
    path = write(
        tmp_path,
        route(
            "  - name: a\n    path: /a\n    methods: [GET]\n    providers: [dev]\n"
            "    data_class: pii\n" + limits
        ),
    )
    [(where, message)] = problems(path)
    assert where == (at(path, "[{name: r") if limits else at(path, "name: a"))
    assert message.startswith(
        "$.routes[0].rate_limits: a pii route needs a rate limit per identity"
    )


def test_pii_needs_the_audit_trail(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        route(
            "  - name: a\n    path: /a\n    methods: [GET]\n    providers: [dev]\n"
            "    data_class: pii\n" + SUBJECT_LIMIT,
            extra="decision_log: {on_failure: drop}\n",
        ),
    )
    [(where, message)] = problems(path)
    assert where == at(path, "pii")
    assert message.startswith("$.routes[0].data_class: a pii route needs the audit trail on")
    assert "decision_log: {on_failure: deny}" in message


PII_ROUTE = (
    "  - name: a\n    path: /a\n    methods: [GET]\n    providers: [dev]\n"
    "    data_class: pii\n" + SUBJECT_LIMIT
)


def test_the_rule_reads_the_loaded_audit_section(tmp_path: Path) -> None:
    from authz.audit.chain import keygen

    private, _ = keygen()
    (tmp_path / "audit.pem").write_bytes(private)
    audit = "audit: {dir: trail, signing_key: audit.pem}\n"
    path = write(tmp_path, route(PII_ROUTE, extra="decision_log: {on_failure: drop}\n" + audit))
    config = load_policy(path)  # the audit trail, as loaded, satisfies the rule
    assert config.audit is not None and config.routes[0].data_class == "pii"


def test_an_audit_section_that_does_not_load_is_reported_once(tmp_path: Path) -> None:
    audit = "audit: {dir: trail, signing_key: missing.pem}\n"
    path = write(tmp_path, route(PII_ROUTE, extra=audit))
    [(where, message)] = problems(path)  # the section's own error, not also the route's
    assert where == at(path, "missing.pem")
    assert message.startswith("$.audit.signing_key: cannot read")


def test_a_flag_is_not_an_audit_trail(tmp_path: Path) -> None:
    # only the loaded configuration counts: nothing in the raw document turns it on
    path = write(tmp_path, route(PII_ROUTE, extra="audit: true\n"))
    found = problems(path)
    assert any(m.startswith("$.audit: ") for _, m in found), found
    assert not any("needs the audit trail on" in m for _, m in found), found
    bare = write(tmp_path, route(PII_ROUTE, extra=""), "bare.yaml")
    [(where, message)] = problems(bare)
    assert where == at(bare, "pii")
    assert "needs the audit trail on" in message


def test_controls_audit_on_comes_from_frozen_configs(tmp_path: Path) -> None:
    from authz.policy.audit_config import AuditConfig
    from authz.policy.config import DecisionLogConfig

    assert not Controls((), ()).audit_on
    assert Controls((), (), AuditConfig(dir="d", signing_key="k", key_pem=b"")).audit_on
    assert Controls((), (), None, DecisionLogConfig(on_failure="deny")).audit_on
    assert not Controls((), (), None, DecisionLogConfig(on_failure="drop")).audit_on


def test_regulated_needs_every_credential_bound_to_its_sender(tmp_path: Path) -> None:
    spiffe_limit = "    rate_limits: [{name: w, rate: 10/s, key: [spiffe_id]}]\n"
    good = route(
        "  - name: a\n    path: /a\n    methods: [POST]\n    providers: [mesh]\n"
        "    data_class: regulated\n" + spiffe_limit
    )
    assert load_policy(write(tmp_path, good)).routes[0].data_class == "regulated"
    path = write(
        tmp_path,
        route(
            "  - name: a\n    path: /a\n    methods: [POST]\n    providers: [mesh, dev]\n"
            "    data_class: regulated\n" + SUBJECT_LIMIT
        ),
    )
    [(where, message)] = problems(path)
    assert where == at(path, "dev]")
    assert message.startswith(
        "$.routes[0].providers[1]: a regulated route needs every credential bound to its "
        "sender: provider 'dev' (jwt) is not"
    )


def test_regulated_also_needs_the_pii_controls(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        route(
            "  - name: a\n    path: /a\n    methods: [POST]\n    providers: [keys]\n"
            "    data_class: regulated\n",
            extra="",
        ),
    )
    found = problems(path)
    # one problem per place: the API key is reported as such, not also as not
    # sender-constrained
    assert sorted(m.split(": ", 1)[0] for _, m in found) == [
        "$.routes[0].data_class",  # audit
        "$.routes[0].providers[0]",
        "$.routes[0].rate_limits",
    ]
    assert (
        "takes no API-key provider ('keys')"
        in dict((m.split(": ", 1) for _, m in found))["$.routes[0].providers[0]"]
    )


def test_confidential_and_internal_need_no_extra_controls(tmp_path: Path) -> None:
    text = route(
        "  - {name: a, path: /a, methods: [GET], providers: [keys], data_class: confidential}\n"
        "  - {name: b, path: /b, methods: [GET], providers: [keys], data_class: internal}\n",
        extra="",
    )
    assert [r.data_class for r in load_policy(write(tmp_path, text)).routes] == [
        "confidential",
        "internal",
    ]


# --------------------------------------------------------------------------- OpenAPI

OPENAPI = """\
openapi: 3.1.0
info: {title: t, version: "1"}
security:
  - bearer: []
paths:
  /people:
    post:
      operationId: add-person
      x-data-class: confidential
      requestBody:
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Person"}
      responses: {"201": {description: ok}}
    get:
      operationId: list-people
      x-data-class: {klass}
      responses: {"200": {description: ok}}
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
  schemas:
    Person:
      type: object
      properties:
        ssn: {type: string, x-data-class: regulated}
"""


def openapi_policy(tmp_path: Path, klass: str, extra: str = AUDIT) -> Path:
    write(tmp_path, OPENAPI.replace("{klass}", klass), "openapi.yaml")
    return write(
        tmp_path,
        HEAD
        + extra
        + "openapi:\n  - file: openapi.yaml\n    security_schemes: {bearer: [mesh]}\n"
        + "rate_limits:\n  rules: [{name: g, rate: 10/s, key: [spiffe_id]}]\n"
        + "routes: []\n",
    )


def test_openapi_operations_and_fields_carry_classes(tmp_path: Path) -> None:
    config = load_policy(openapi_policy(tmp_path, "internal"))
    got = {
        r.name: (r.data_class, r.declared_data_class, r.field_data_classes) for r in config.routes
    }
    assert got == {
        "add-person": ("regulated", "confidential", (("/ssn", "regulated"),)),
        "list-people": ("internal", "internal", ()),
    }


def test_openapi_rules_are_placed_at_the_operation(tmp_path: Path) -> None:
    path = openapi_policy(tmp_path, "internal", extra="")
    found = problems(path)
    openapi = tmp_path / "openapi.yaml"
    assert found == [
        (
            at(openapi, "post:"),
            "operation add-person: a regulated route (from body field /ssn) needs the audit "
            "trail on (an audit: section with dir and signing_key; at least decision_log: "
            "{on_failure: deny}), so that every access is recorded",
        )
    ]


def test_an_openapi_class_that_is_no_class_is_located(tmp_path: Path) -> None:
    path = openapi_policy(tmp_path, "secret")
    [(where, message)] = problems(path)
    assert where == at(tmp_path / "openapi.yaml", "x-data-class: secret")
    assert message == (
        "$.paths./people.get.x-data-class: must be one of public, internal, confidential, "
        "pii, regulated"
    )


# --------------------------------------------------------------------------- CLI, example


def test_validate_prints_the_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        route(
            "  - {name: ok, path: /ok, methods: [GET], public: true}\n"
            "  - {name: a, path: /a, methods: [GET], providers: [dev], data_class: pii}\n"
        ),
    )
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{at(path, '{name: a')}: $.routes[1].rate_limits: a pii route needs a rate limit per "
        "identity (a rate rule on the route or global, not shadow, keyed by subject, or "
        "spiffe_id for mtls and claim:NAME for jwt callers), so that no one caller reads "
        "it in bulk",
        f"{path}: invalid (1 problem)",
    ]


def test_the_example_policy_is_classified() -> None:
    repo = Path(__file__).resolve().parents[2]
    config: PolicyConfig = load_policy(repo / "examples" / "policy.yaml")
    classes = {r.name: r.data_class for r in config.routes}
    assert classes["health"] == "public"
    assert classes["create-order"] == "pii"  # its note field
    assert classes["mesh-sync"] == "regulated"
    assert set(classes.values()) == set(CLASSES)


MESH = MtlsProviderConfig(name="mesh", trust_domains=("td.local",))
KEYS = ApiKeyProviderConfig(name="keys")
DEV = JwtProviderConfig(name="dev", issuer="https://issuer.example", audiences=("api",))
BY_SUBJECT = RuleConfig(name="r", key=("subject",), limit=1, period=1.0, burst=1)


@pytest.mark.parametrize(
    ("rule", "bad", "good"),
    [
        (
            "public_route_class",
            RouteConfig("a", "/a", ("GET",), public=True, data_class="internal"),
            RouteConfig("a", "/a", ("GET",), public=True, data_class="public"),
        ),
        (
            "no_api_key",
            RouteConfig("a", "/a", ("GET",), providers=("keys",), data_class="pii"),
            RouteConfig("a", "/a", ("GET",), providers=("mesh",), data_class="pii"),
        ),
        (
            "per_identity_rate_limit",
            RouteConfig("a", "/a", ("GET",), providers=("mesh",), data_class="pii"),
            RouteConfig(
                "a", "/a", ("GET",), providers=("mesh",), data_class="pii",
                rate_limits=(BY_SUBJECT,),
            ),
        ),
        (
            "audit_on",
            RouteConfig("a", "/a", ("GET",), providers=("mesh",), data_class="regulated"),
            RouteConfig("a", "/a", ("GET",), providers=("mesh",), data_class="confidential"),
        ),
        (
            "sender_constrained",
            RouteConfig("a", "/a", ("GET",), providers=("dev",), data_class="regulated"),
            RouteConfig("a", "/a", ("GET",), providers=("mesh",), data_class="regulated"),
        ),
        (
            "sender_constrained",
            RouteConfig("a", "/a", ("GET",), providers=("dev",), data_class="regulated"),
            RouteConfig("a", "/a", ("GET",), providers=("dev",), data_class="regulated",
                        sender_constrained=True),
        ),
    ],
)  # fmt: skip
def test_each_rule_of_the_table(rule: str, bad: RouteConfig, good: RouteConfig) -> None:
    controls = Controls((MESH, KEYS, DEV), ())
    assert rule in {f.rule for f in check_route(bad, controls)}
    assert rule not in {f.rule for f in check_route(good, controls)}


def test_the_table_is_what_the_cases_cover() -> None:
    assert [r.name for r in RULES] == [
        "public_route_class",
        "no_api_key",
        "per_identity_rate_limit",
        "audit_on",
        "sender_constrained",
    ]


def test_recursive_schemas_are_walked_once() -> None:
    found: list[tuple[tuple[str | int, ...], str]] = []
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "x-data-class": "pii"},
            "children": {"type": "array", "items": {"$ref": "#"}},
            "parent": {"$ref": "#/$defs/Node"},
        },
        "$defs": {"Node": {"$ref": "#", "x-data-class": "confidential"}},
    }
    got = field_classes(schema, ("body",), lambda at, message: found.append((at, message)))
    # each reference is followed once along a path: a recursive schema ends
    assert got == (
        ("/children/*/name", "pii"),
        ("/children/*/parent", "confidential"),
        ("/name", "pii"),
        ("/parent", "confidential"),
        ("/parent/name", "pii"),
    )
    assert found == []


def test_a_key_must_tell_apart_the_callers_of_every_provider(tmp_path: Path) -> None:
    # spiffe_id tells mTLS callers apart, not the JWT callers of the same route
    path = write(
        tmp_path,
        route(
            "  - name: a\n    path: /a\n    methods: [GET]\n    providers: [mesh, dev]\n"
            "    data_class: pii\n"
            "    rate_limits: [{name: r, rate: 10/s, key: [spiffe_id]}]\n"
        ),
    )
    [(_, message)] = problems(path)
    assert message.startswith("$.routes[0].rate_limits: a pii route needs a rate limit")
