"""Load a policy file: YAML -> JSON Schema check -> semantic checks -> PolicyConfig.

Every problem is reported with its location (``file:line:column``), all of them
at once, as a :class:`~authz.errors.PolicyError`. This is the only module that
sees raw YAML; it returns frozen :mod:`authz.policy.config` objects.

Over 400 lines on purpose: one builder for the policy document, whose semantic
checks cross-reference providers, routes and contracts; the parts that stand alone
live beside it (:mod:`.document` reading, :mod:`.ratelimit_loader`, :mod:`.openapi`,
:mod:`.contract`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from authz.errors import PolicyError
from authz.pathtemplate import TemplateError, parse_template
from authz.policy.audit_loader import load_audit
from authz.policy.classification import (
    Controls,
    check_route,
    effective_class,
    field_classes,
)
from authz.policy.config import (
    DEFAULT_STRIP_HEADERS,
    HMAC_ALGORITHMS,
    ApiKey,
    ApiKeyProviderConfig,
    DecisionLogConfig,
    DpopConfig,
    HeaderNames,
    HygieneConfig,
    IntrospectionProviderConfig,
    JwtProviderConfig,
    MtlsProviderConfig,
    PolicyConfig,
    ProviderConfig,
    RouteConfig,
)
from authz.policy.contract import build_contract, defaults_from
from authz.policy.detection_loader import load_detection
from authz.policy.document import JsonPath, json_path, parse_duration, parse_yaml
from authz.policy.enforcement_loader import EnforcementBuilder
from authz.policy.ratelimit_config import RateLimitConfig
from authz.policy.ratelimit_loader import RateLimitBuilder
from authz.policy.telemetry_config import load_tracing

#: Reads a file the policy names (raises OSError like Path.read_bytes).
ReadFile = Callable[[Path], bytes]


@cache
def policy_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file (shipped in the package)."""
    text = resources.files("authz.policy").joinpath("policy.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(policy_schema())


def policy_version(data: bytes) -> str:
    """The policy version: a content hash of the file."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def load_policy(path: str | Path) -> PolicyConfig:
    """Read, check and compile a policy file; raise PolicyError listing every problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError([(str(path), f"cannot read the policy file: {exc.strerror}")]) from exc
    return load_policy_bytes(data, source=str(path), base_dir=path.parent)


def load_policy_bytes(
    data: bytes, *, source: str, base_dir: Path, read: ReadFile | None = None
) -> PolicyConfig:
    """Check and compile a policy from its bytes; ``read`` reads the documents it names
    (OpenAPI files; default: from disk), so that a caller that hashed a snapshot of
    every file can have exactly those bytes compiled."""
    doc, marks, key_marks = parse_yaml(data, source)
    problems: list[tuple[str, str]] = []

    def where(jpath: JsonPath, *, key: bool = False) -> str:
        if key and jpath in key_marks:
            line, column = key_marks[jpath]
            return f"{source}:{line}:{column}"
        # the deepest node of the path that has a known position
        for cut in range(len(jpath), -1, -1):
            mark = marks.get(tuple(jpath[:cut]))
            if mark is not None:
                return f"{source}:{mark[0]}:{mark[1]}"
        return source

    schema_paths: list[JsonPath] = []
    for err in _validator().iter_errors(doc):
        jpath = tuple(err.absolute_path)
        schema_paths.append(jpath)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = set(err.schema.get("properties", {}))
            for extra in (k for k in err.instance if k not in known):
                problems.append(
                    (
                        where((*jpath, extra), key=True),
                        f"{json_path(jpath)}: unknown field {extra!r}",
                    )
                )
            continue
        problems.append((where(jpath), f"{json_path(jpath)}: {_schema_message(err)}"))

    # Semantic checks run even when the schema found problems, so that one run of
    # `authz validate` lists everything; parts the schema rejected are skipped.
    builder = _Builder(
        doc, where, base_dir, tolerant=bool(problems), reported=schema_paths, read=read
    )
    config = builder.build(policy_version(data), source)
    if builder.documents:
        # The policy is the file and the documents it names: a change to either is a
        # new version.
        parts = [data] + [hashlib.sha256(d).digest() for d in builder.document_bytes]
        config = dataclasses.replace(config, version=policy_version(b"".join(parts)))
    problems.extend(builder.problems)
    if problems:
        raise PolicyError(sorted(problems, key=_by_position))
    return config


def _by_position(problem: tuple[str, str]) -> tuple[str, int, int]:
    parts = problem[0].rsplit(":", 2)
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return problem[0], 0, 0


def _schema_message(err: Any) -> str:
    if err.validator == "additionalProperties":
        return str(err.message).replace("Additional properties are not allowed", "unknown field(s)")
    if err.validator == "enum":
        return f"must be one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "oneOf" and err.schema.get("description"):
        return f"invalid value: {err.schema['description']}"
    return str(err.message)


def parse_expiry(value: str) -> float:
    """RFC 3339 date or date-time -> unix time (a bare date means its start, UTC)."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# --------------------------------------------------------------------------- semantics


class _Builder:
    def __init__(
        self,
        doc: Any,
        where: Any,
        base_dir: Path,
        *,
        tolerant: bool = False,
        reported: list[JsonPath] | None = None,
        read: ReadFile | None = None,
    ) -> None:
        self.doc = doc if isinstance(doc, dict) else {}
        self.reported = reported or []  # where the schema already found a problem
        self.where = where
        self.base_dir = base_dir
        self.read: ReadFile = read or Path.read_bytes
        self.tolerant = tolerant  # the schema failed: skip what cannot be read
        self.problems: list[tuple[str, str]] = []
        self.documents: list[str] = []  # OpenAPI files, resolved
        self.document_bytes: list[bytes] = []
        self.contract_defaults = defaults_from(self.doc.get("validation"))
        self.limits = RateLimitBuilder(self, self.doc)
        self.enforcement = EnforcementBuilder(self, self.doc)

    def guarded(self, fn: Any, *args: Any) -> Any:
        if not self.tolerant:
            return fn(*args)
        try:
            return fn(*args)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return None

    def hygiene(self, spec: dict[str, Any]) -> HygieneConfig:
        names = tuple(spec.get("strip_headers", DEFAULT_STRIP_HEADERS))
        for i, name in enumerate(names):
            if "*" in name[:-1] or name == "*":
                self.problem(
                    ("hygiene", "strip_headers", i), "only a trailing * after a prefix is allowed"
                )
        return HygieneConfig(
            strip_headers=names, method_override=spec.get("method_override", "deny")
        )

    def problem(self, jpath: JsonPath, message: str) -> None:
        for seen in self.reported:  # one problem per place: the schema's wins
            n = min(len(seen), len(jpath))
            if seen[:n] == jpath[:n]:
                return
        self.problems.append((self.where(jpath), f"{json_path(jpath)}: {message}"))

    def build(self, version: str, source: str) -> PolicyConfig:
        doc = self.doc
        headers = self.guarded(lambda: HeaderNames(**doc.get("headers", {}))) or HeaderNames()
        if len(set(headers.all())) != len(headers.all()):
            self.problem(("headers",), "identity header names must be distinct")
        hygiene = self.guarded(self.hygiene, doc.get("hygiene") or {}) or HygieneConfig()
        provider_specs = doc.get("providers")
        providers = tuple(
            p
            for name, spec in (provider_specs.items() if isinstance(provider_specs, dict) else ())
            if (p := self.guarded(self.provider, name, spec)) is not None
        )
        by_name = {p.name: p for p in providers}
        self.guarded(self.limits.load)
        route_specs = doc.get("routes")
        written = [
            (i, r)
            for i, spec in enumerate(route_specs if isinstance(route_specs, list) else ())
            if (r := self.guarded(self.route, i, spec, by_name)) is not None
        ]
        routes = tuple(r for _, r in written)
        openapi_specs = doc.get("openapi")
        for i, spec in enumerate(openapi_specs if isinstance(openapi_specs, list) else ()):
            routes += tuple(self.guarded(self.openapi, i, spec, by_name) or ())
        self.guarded(self.check_route_set, routes)
        audit = self.guarded(load_audit, doc, self, self.base_dir)
        decision_log = (
            self.guarded(lambda: DecisionLogConfig(**doc.get("decision_log", {})))
            or DecisionLogConfig()
        )
        controls = Controls(
            providers, self.limits.global_rules, audit, decision_log,
            audit_invalid=audit is None and doc.get("audit") is not None,
        )  # fmt: skip
        self.guarded(self.check_classes, written, routes[len(written) :], controls)
        rate_limits = self.guarded(self.limits.config) or RateLimitConfig()
        stores = {st.name for st in rate_limits.stores}
        for p in providers:
            store = p.dpop.replay_store if isinstance(p, JwtProviderConfig) and p.dpop else None
            if store is not None and store not in stores:
                self.problem(
                    ("providers", p.name, "dpop_replay_store"), f"no Redis store named {store!r}"
                )
        return PolicyConfig(
            version=version,
            source=source,
            mode=doc.get("mode", "enforce"),
            undeclared_routes=doc.get("undeclared_routes", "deny"),
            realm=doc.get("realm", "authz"),
            headers=headers,
            hygiene=hygiene,
            providers=providers,
            routes=routes,
            documents=tuple(self.documents),
            rate_limits=rate_limits,
            decision_log=decision_log,
            detection=self.guarded(load_detection, doc, self, routes),
            enforcement=self.guarded(self.enforcement.config),
            audit=audit,
            tracing=self.guarded(load_tracing, doc),
        )

    def openapi(
        self, i: int, spec: dict[str, Any], providers: dict[str, ProviderConfig]
    ) -> list[RouteConfig]:
        from authz.policy.openapi import load_openapi

        at: JsonPath = ("openapi", i)
        for scheme, names in spec.get("security_schemes", {}).items():
            for j, name in enumerate(names):
                if name not in providers:
                    self.problem(
                        (*at, "security_schemes", scheme, j), f"no provider named {name!r}"
                    )
        routes, file, data, problems = load_openapi(
            spec, self.base_dir, providers, self.contract_defaults, read=self.read
        )
        if file is None:
            self.problem((*at, "file"), problems[0][1])
            return []
        self.documents.append(str(file.resolve()))
        self.document_bytes.append(data)
        self.problems.extend(problems)
        return routes

    def provider(self, name: str, spec: dict[str, Any]) -> ProviderConfig | None:
        at: JsonPath = ("providers", name)
        kind = spec["type"]
        if kind == "mtls":
            return self.mtls_provider(name, spec, at)
        if kind == "api_key":
            return self.api_key_provider(name, spec, at)
        if kind == "introspection":
            return self.introspection_provider(name, spec, at)
        sources: list[str] = [k for k in ("jwks_uri", "jwks_file") if k in spec]
        if spec.get("discovery"):
            sources.append("discovery")
        if len(sources) > 1:
            self.problem(at, f"give one key source, not {' and '.join(sources)}")
        discovery = not sources or sources == ["discovery"]
        jwks_file = None
        if "jwks_file" in spec:
            file = Path(spec["jwks_file"])
            file = file if file.is_absolute() else (self.base_dir / file)
            if not file.is_file():
                self.problem((*at, "jwks_file"), f"no such file: {file}")
            jwks_file = str(file.resolve())
        algorithms = tuple(spec.get("algorithms", ("RS256", "ES256")))
        if any(a in HMAC_ALGORITHMS for a in algorithms):
            self.problem((*at, "algorithms"), "HMAC algorithms are not accepted for issuers")
        defaults = JwtProviderConfig(name=name, issuer="", audiences=())

        def duration(key: str) -> float:
            value = spec.get(key)
            return float(getattr(defaults, key)) if value is None else parse_duration(value)

        max_lifetime = duration("max_lifetime")
        if max_lifetime <= 0:
            self.problem((*at, "max_lifetime"), "must be more than zero")
        return JwtProviderConfig(
            name=name,
            issuer=spec["issuer"],
            audiences=tuple(spec["audiences"]),
            algorithms=algorithms,
            jwks_uri=spec.get("jwks_uri"),
            jwks_file=jwks_file,
            discovery=discovery,
            scope_claim=spec.get("scope_claim", "scope"),
            header=spec.get("header", "authorization"),
            cache_size=spec.get("cache_size", defaults.cache_size),
            min_rsa_bits=spec.get("min_rsa_bits", defaults.min_rsa_bits),
            typ=self.jwt_typ(spec, at),
            dpop=self.jwt_dpop(spec, at),
            leeway=duration("leeway"),
            max_lifetime=max_lifetime,
            jwks_ttl=duration("jwks_ttl"),
            jwks_refresh_interval=duration("jwks_refresh_interval"),
            jwks_stale_ttl=duration("jwks_stale_ttl"),
            jwks_timeout=duration("jwks_timeout"),
        )

    def jwt_typ(self, spec: dict[str, Any], at: JsonPath) -> tuple[str, ...] | None:
        from authz.identity.claims import normalise_typ

        values = spec.get("typ")
        if values is None:
            return None
        typ = tuple(dict.fromkeys(normalise_typ(v) for v in values))
        if not all(typ):
            self.problem((*at, "typ"), "an empty typ")
        return typ

    def jwt_dpop(self, spec: dict[str, Any], at: JsonPath) -> DpopConfig | None:
        mode = spec.get("dpop")
        if mode is None:
            return None
        defaults = DpopConfig()
        window = spec.get("dpop_iat_window")
        iat_window = defaults.iat_window if window is None else parse_duration(window)
        if iat_window <= 0:
            self.problem((*at, "dpop_iat_window"), "must be more than zero")
        return DpopConfig(
            mode=mode,
            iat_window=iat_window,
            replay_cache_size=spec.get("dpop_replay_cache_size", defaults.replay_cache_size),
            replay_store=spec.get("dpop_replay_store"),
        )

    def mtls_provider(self, name: str, spec: dict[str, Any], at: JsonPath) -> MtlsProviderConfig:
        domains = tuple(spec["trust_domains"])
        given: dict[str, str] = spec.get("trust_bundles") or {}
        bundles: list[tuple[str, str]] = []
        for domain in domains:
            if given and domain not in given:
                self.problem(
                    (*at, "trust_bundles"),
                    f"no bundle for trust domain {domain!r}: give one per trust domain",
                )
        for domain, raw in given.items():
            where = (*at, "trust_bundles", domain)
            if domain not in domains:
                self.problem(where, f"{domain!r} is not one of trust_domains")
                continue
            file = Path(raw)
            file = file if file.is_absolute() else (self.base_dir / file)
            problem = _bundle_problem(file)
            if problem:
                self.problem(where, problem)
            bundles.append((domain, str(file.resolve())))
        return MtlsProviderConfig(name=name, trust_domains=domains, trust_bundles=tuple(bundles))

    def introspection_provider(
        self, name: str, spec: dict[str, Any], at: JsonPath
    ) -> IntrospectionProviderConfig:
        file = Path(spec["client_secret_file"])
        file = file if file.is_absolute() else (self.base_dir / file)
        if not file.is_file():
            self.problem((*at, "client_secret_file"), f"no such file: {file}")
        d = IntrospectionProviderConfig(name=name, endpoint="", client_id="", client_secret_file="")

        def duration(key: str) -> float:
            value = spec.get(key)
            return float(getattr(d, key)) if value is None else parse_duration(value)

        for key in ("timeout", "cache_ttl"):
            if duration(key) <= 0:
                self.problem((*at, key), "must be more than zero")
        return IntrospectionProviderConfig(
            name=name,
            endpoint=spec["endpoint"],
            client_id=spec["client_id"],
            client_secret_file=str(file.resolve()),
            timeout=duration("timeout"),
            cache_size=spec.get("cache_size", d.cache_size),
            cache_ttl=duration("cache_ttl"),
            negative_ttl=duration("negative_ttl"),
            issuer=spec.get("issuer"),
            audiences=tuple(spec.get("audiences", ())),
            scope_claim=spec.get("scope_claim", "scope"),
            header=spec.get("header", "authorization"),
        )

    def api_key_provider(
        self, name: str, spec: dict[str, Any], at: JsonPath
    ) -> ApiKeyProviderConfig:
        keys: list[ApiKey] = []
        seen_ids: set[str] = set()
        seen_digests: set[str] = set()
        for i, k in enumerate(spec["keys"]):
            kat = (*at, "keys", i)
            if k["id"] in seen_ids:
                self.problem((*kat, "id"), f"duplicate key id {k['id']!r}")
            if k["sha256"] in seen_digests:
                self.problem((*kat, "sha256"), "the same key digest appears twice")
            seen_ids.add(k["id"])
            seen_digests.add(k["sha256"])
            try:
                expires_at = parse_expiry(k["expires"])
            except ValueError:
                self.problem((*kat, "expires"), "not an RFC 3339 date or date-time")
                expires_at = 0.0
            created_at = None
            if "created" in k:
                try:
                    created_at = parse_expiry(k["created"])
                except ValueError:
                    self.problem((*kat, "created"), "not an RFC 3339 date or date-time")
                if created_at is not None and expires_at and created_at > expires_at:
                    self.problem((*kat, "created"), "a key cannot be created after it expires")
            keys.append(
                ApiKey(
                    id=k["id"],
                    sha256=k["sha256"],
                    owner=k["owner"],
                    scopes=tuple(k.get("scopes", ())),
                    expires_at=expires_at,
                    created_at=created_at,
                )
            )
        return ApiKeyProviderConfig(
            name=name, header=spec.get("header", "x-api-key"), keys=tuple(keys)
        )

    def route(
        self, i: int, spec: dict[str, Any], providers: dict[str, ProviderConfig]
    ) -> RouteConfig:
        at: JsonPath = ("routes", i)
        try:
            parse_template(spec["path"])
        except TemplateError as exc:
            self.problem((*at, "path"), str(exc))
        public = bool(spec.get("public", False))
        names = tuple(spec.get("providers", ()))
        for j, pname in enumerate(names):
            if pname not in providers:
                self.problem((*at, "providers", j), f"no provider named {pname!r}")
        if public and (names or spec.get("scopes") or spec.get("claims") or spec.get("spiffe_ids")):
            self.problem(at, "a public route takes no providers, scopes, claims or spiffe_ids")
        if not public and not names:
            self.problem(at, "a route needs providers (or public: true)")
        kinds = {providers[n].type for n in names if n in providers}
        if spec.get("spiffe_ids") and "mtls" not in kinds:
            self.problem((*at, "spiffe_ids"), "spiffe_ids need an mtls provider on the route")
        if spec.get("scopes") and not kinds & {"jwt", "api_key", "introspection"}:
            self.problem((*at, "scopes"), "scopes need a jwt or api_key provider on the route")
        exact = tuple(s for s in spec.get("spiffe_ids", ()) if not s.endswith("/*"))
        prefixes = tuple(s[:-1] for s in spec.get("spiffe_ids", ()) if s.endswith("/*"))
        claims = tuple(
            (claim, tuple(_claim_text(v) for v in (value if isinstance(value, list) else [value])))
            for claim, value in spec.get("claims", {}).items()
        )
        mark = self.where(at)
        contract = None
        if "contract" in spec:
            try:
                template_params = parse_template(spec["path"]).params
            except TemplateError:
                template_params = ()
            contract = build_contract(
                spec["contract"],
                (*at, "contract"),
                self.problem,
                self.where,
                self.contract_defaults,
                template_params,
            )
        priority, rate_limits = self.limits.route_limits(i, spec, spec["name"], public)
        body = spec.get("contract", {}).get("body")
        fields = field_classes(body, (*at, "contract", "body"), self.problem) if body else ()
        declared = spec.get("data_class", "")
        return RouteConfig(
            name=spec["name"],
            path=spec["path"],
            methods=tuple(spec["methods"]),
            hosts=tuple(h.lower() for h in spec.get("hosts", ())),
            providers=names,
            scopes=tuple(spec.get("scopes", ())),
            claims=claims,
            spiffe_ids=exact,
            spiffe_id_prefixes=prefixes,
            public=public,
            mode=spec.get("mode"),
            strip_credential=bool(spec.get("strip_credential", False)),
            location=mark,
            contract=contract,
            priority=priority,
            rate_limits=rate_limits,
            credentials=spec.get("credentials", "exclusive"),
            sender_constrained=bool(spec.get("sender_constrained", False)),
            data_class=effective_class(declared, public, fields),
            declared_data_class=declared,
            field_data_classes=fields,
        )

    def check_classes(
        self,
        written: list[tuple[int, RouteConfig]],
        imported: tuple[RouteConfig, ...],
        controls: Controls,
    ) -> None:
        """The minimum controls of each route's data class (:mod:`.classification`),
        against the frozen audit and decision-log configuration."""
        for i, route in written:
            for found in check_route(route, controls):
                self.problem(("routes", i, *found.field), found.message)
        for route in imported:  # from OpenAPI: placed at the operation
            for found in check_route(route, controls):
                self.problems.append((route.location, f"operation {route.name}: {found.message}"))

    def check_route_set(self, routes: tuple[RouteConfig, ...]) -> None:
        names: dict[str, int] = {}
        seen: dict[tuple[str, str, str], int] = {}

        def report(i: int, jpath: JsonPath, message: str) -> None:
            contract = routes[i].contract
            if contract is not None and contract.origin != "policy":  # from an OpenAPI file
                self.problems.append((routes[i].location, f"operation {routes[i].name}: {message}"))
            else:
                self.problem(jpath, message)

        for i, r in enumerate(routes):
            if r.name in names:
                report(i, ("routes", i, "name"), f"duplicate route name {r.name!r}")
            names.setdefault(r.name, i)
            try:
                shape = tuple(
                    f"{{{kind}}}" if kind else text
                    for kind, text in parse_template(r.path).segments
                )
            except TemplateError:
                continue
            for host in r.hosts or ("*",):
                for method in r.methods:
                    key = (host, method, "/".join(shape))
                    if key in seen:
                        report(
                            i,
                            ("routes", i),
                            f"{method} {r.path} is already declared by route "
                            f"{routes[seen[key]].name!r}",
                        )
                    seen.setdefault(key, i)


def _claim_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bundle_problem(file: Path) -> str | None:
    """Why ``file`` is no PEM CA bundle (one or more CA certificates), or None."""
    from cryptography import x509

    try:
        data = file.read_bytes()
    except OSError as exc:
        return f"cannot read {file}: {exc.strerror or exc}"
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        return f"{file}: no PEM certificate in it"
    for cert in certs:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            return f"{file}: {cert.subject.rfc4514_string()} is not a CA certificate"
    return None
