"""Routes from an OpenAPI 3.0 or 3.1 document named in the policy (``openapi:``).

Each operation becomes a route, mixed with the hand-written ones:

- ``paths`` + method -> the route's path and method; the name is the
  ``operationId`` (or ``method-path``). ``/orders/{orderId}`` is our template syntax
  already; a parameter that fills only part of a segment (``/{name}.json``) cannot be
  matched by Envoy's URI templates and is refused. ``base_path`` prefixes every path.
- ``parameters`` (path, query, header; path-level ones merged, ``$ref`` followed) and
  ``requestBody`` (JSON and form media types) -> the route's contract;
  ``components/schemas`` references become ``$defs`` of each schema; OpenAPI 3.0
  schemas are converted to draft 2020-12 (``nullable``, boolean ``exclusiveMinimum``).
- ``security`` (the operation's, else the document's) -> providers and required
  scopes: the policy maps each security scheme to providers (``security_schemes``);
  a requirement's list is the scopes the caller must hold. ``security: []`` makes a
  public operation. An operation with no security at all is refused: deny by default.

Every problem is reported at its place in the OpenAPI file (``file:line:column``).

Over 400 lines on purpose: one converter, operation by operation; its parts (``$ref``
resolution, schema conversion, parameters, security) share the document and the
locating of problems in it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz.pathtemplate import TemplateError, parse_template
from authz.policy.classification import ANNOTATION, CLASSES, effective_class, field_classes
from authz.policy.config import (
    JSON_MEDIA_TYPE,
    BodyLimits,
    ContractConfig,
    ProviderConfig,
    RouteConfig,
)
from authz.policy.contract import (
    ContractDefaults,
    build_parameters,
    make_schema,
    readable_body_type,
)
from authz.policy.document import JsonPath, json_path, parse_yaml

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_VERSION = re.compile(r"^3\.(0|1)\.\d+$")
_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]+")
_PARAM_SEGMENT = re.compile(r"^\{([^{}]+)\}$")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONE = (
    "items",
    "additionalProperties",
    "not",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
)
_SCHEMA_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
_LOCAL_SCHEMA_REF = "#/components/schemas/"


class _Doc:
    """One OpenAPI document with the positions of its nodes."""

    def __init__(
        self,
        path: Path,
        doc: Any,
        marks: dict[JsonPath, tuple[int, int]],
        key_marks: dict[JsonPath, tuple[int, int]],
    ) -> None:
        self.path = path
        self.doc = doc
        self.marks = marks
        self.key_marks = key_marks
        self.problems: list[tuple[str, str]] = []

    def where(self, jpath: JsonPath) -> str:
        key = self.key_marks.get(tuple(jpath))
        if key is not None:  # a mapping entry: point at its key
            return f"{self.path}:{key[0]}:{key[1]}"
        for cut in range(len(jpath), -1, -1):
            mark = self.marks.get(tuple(jpath[:cut]))
            if mark is not None:
                return f"{self.path}:{mark[0]}:{mark[1]}"
        return str(self.path)

    def problem(self, jpath: JsonPath, message: str) -> None:
        self.problems.append((self.where(jpath), f"{json_path(jpath)}: {message}"))


def load_openapi(
    entry: dict[str, Any],
    base_dir: Path,
    providers: dict[str, ProviderConfig],
    defaults: ContractDefaults,
    read: Callable[[Path], bytes] = Path.read_bytes,
) -> tuple[list[RouteConfig], Path | None, bytes, list[tuple[str, str]]]:
    """(routes, resolved file, its bytes, problems located in the OpenAPI file);
    ``read`` reads the file (the loader's, so that a snapshot can be compiled)."""
    from authz.errors import PolicyError

    file = Path(entry["file"])
    file = file if file.is_absolute() else base_dir / file
    try:
        data = read(file)
    except OSError as exc:
        return [], None, b"", [(str(file), f"cannot read the OpenAPI document: {exc.strerror}")]
    try:
        raw, marks, key_marks = parse_yaml(data, str(file))
    except PolicyError as exc:
        return [], file, data, list(exc.problems)
    doc = _Doc(file, raw, marks, key_marks)
    routes = _Importer(doc, entry, providers, defaults).routes()
    return routes, file, data, doc.problems


class _Importer:
    def __init__(
        self,
        doc: _Doc,
        entry: dict[str, Any],
        providers: dict[str, ProviderConfig],
        defaults: ContractDefaults,
    ) -> None:
        self.d = doc
        self.entry = entry
        self.providers = providers
        self.defaults = defaults
        self.mapping: dict[str, list[str]] = dict(entry.get("security_schemes", {}))
        self.v30 = False

    def routes(self) -> list[RouteConfig]:
        raw = self.d.doc
        if not isinstance(raw, dict):
            self.d.problem((), "not an OpenAPI document (expected a mapping)")
            return []
        version = raw.get("openapi")
        if not isinstance(version, str) or not _VERSION.match(version):
            self.d.problem(
                ("openapi",) if "openapi" in raw else (),
                "not an OpenAPI 3.0 or 3.1 document (openapi: 3.0.x or 3.1.x)",
            )
            return []
        self.v30 = version.startswith("3.0")
        paths = raw.get("paths", {})
        if not isinstance(paths, dict):
            self.d.problem(("paths",), "paths must be a mapping")
            return []
        schemes = self._dict(("components", "securitySchemes"))
        for name in self.mapping:
            if name not in schemes:
                self.d.problem(
                    ("components", "securitySchemes"),
                    f"no security scheme {name!r}, which the policy maps to providers",
                )
        routes: list[RouteConfig] = []
        for path, item in paths.items():
            at: JsonPath = ("paths", path)
            if not isinstance(item, dict):
                self.d.problem(at, "a path item must be a mapping")
                continue
            if "$ref" in item:
                self.d.problem((*at, "$ref"), "path item references are not supported")
                continue
            template, renames = self._template(path, at)
            if template is None:
                continue
            shared_params = self._param_list(item.get("parameters", []), (*at, "parameters"))
            for method in METHODS:
                op = item.get(method)
                if op is None:
                    continue
                if not isinstance(op, dict):
                    self.d.problem((*at, method), "an operation must be a mapping")
                    continue
                route = self._route(template, renames, method, op, (*at, method), shared_params)
                if route is not None:
                    routes.append(route)
        return routes

    # -- helpers -----------------------------------------------------------------------

    def _dict(self, jpath: JsonPath) -> dict[str, Any]:
        node: Any = self.d.doc
        for part in jpath:
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def _deref(self, node: Any, at: JsonPath, kind: str) -> tuple[Any, JsonPath]:
        """Follow a ``#/components/<kind>/X`` reference (a few hops)."""
        for _ in range(8):
            if not (isinstance(node, dict) and "$ref" in node):
                return node, at
            ref = node["$ref"]
            prefix = f"#/components/{kind}/"
            if not isinstance(ref, str) or not ref.startswith(prefix):
                self.d.problem((*at, "$ref"), f"only local references to {prefix}... are supported")
                return None, at
            name = ref[len(prefix) :]
            target = self._dict(("components", kind)).get(name)
            if target is None:
                self.d.problem((*at, "$ref"), f"{ref} does not exist")
                return None, at
            node, at = target, ("components", kind, name)
        self.d.problem(at, "reference loop")
        return None, at

    def _template(self, path: Any, at: JsonPath) -> tuple[str | None, dict[str, str]]:
        if not isinstance(path, str) or not path.startswith("/"):
            self.d.problem(at, "a path must start with '/'")
            return None, {}
        renames: dict[str, str] = {}
        segments = []
        for seg in path.strip("/").split("/") if path != "/" else []:
            m = _PARAM_SEGMENT.match(seg)
            if m:
                name = m.group(1)
                ours = re.sub(r"[^A-Za-z0-9_]", "_", name)
                ours = ours if ours[:1].isalpha() or ours[:1] == "_" else f"p_{ours}"
                renames[name] = ours
                segments.append("{" + ours + "}")
            elif "{" in seg or "}" in seg:
                self.d.problem(
                    at,
                    f"segment {seg!r}: a parameter must fill a whole segment "
                    "(Envoy's URI templates match no partial segments)",
                )
                return None, {}
            else:
                segments.append(seg)
        base = str(self.entry.get("base_path", "")).rstrip("/")
        template = (
            base + "/" + "/".join(segments) + ("/" if path.endswith("/") and segments else "")
        )
        try:
            parse_template(template)
        except TemplateError as exc:
            self.d.problem(at, str(exc))
            return None, {}
        return template, renames

    def _param_list(
        self, specs: Any, at: JsonPath
    ) -> dict[tuple[str, str], tuple[dict[str, Any], JsonPath]]:
        found: dict[tuple[str, str], tuple[dict[str, Any], JsonPath]] = {}
        if not isinstance(specs, list):
            self.d.problem(at, "parameters must be a list")
            return found
        for i, spec in enumerate(specs):
            spec, pat = self._deref(spec, (*at, i), "parameters")
            if not isinstance(spec, dict):
                continue
            name, where_in = spec.get("name"), spec.get("in")
            if not isinstance(name, str) or where_in not in ("path", "query", "header", "cookie"):
                self.d.problem(
                    pat, "a parameter needs a name and in: path, query, header or cookie"
                )
                continue
            if where_in == "cookie":
                continue  # not validated: Envoy passes cookies as one header
            style = spec.get("style")
            default_style = "form" if where_in == "query" else "simple"
            if style not in (None, default_style) or spec.get("explode") is (where_in != "query"):
                self.d.problem(pat, f"only the default style ({default_style}) is supported")
                continue
            if "content" in spec:
                self.d.problem((*pat, "content"), "parameters with content are not supported")
                continue
            found[(name.lower() if where_in == "header" else name, where_in)] = (spec, pat)
        return found

    def _schema(self, raw: Any, at: JsonPath) -> Any:
        """An OpenAPI schema as a self-contained draft 2020-12 schema (or None)."""
        defs: dict[str, Any] = {}
        pending: list[str] = []
        converted = self._convert(raw, at, pending)
        while pending:
            name = pending.pop()
            if name in defs:
                continue
            target = self._dict(("components", "schemas")).get(name)
            if target is None:
                self.d.problem(at, f"#/components/schemas/{name} does not exist")
                return None
            defs[name] = self._convert(target, ("components", "schemas", name), pending)
        if defs and isinstance(converted, dict):
            converted = {**converted, "$defs": defs}
        elif defs:
            converted = {"allOf": [converted], "$defs": defs}
        return converted

    def _convert(self, node: Any, at: JsonPath, pending: list[str]) -> Any:
        if not isinstance(node, dict):
            return copy.deepcopy(node)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(key, str) and key.startswith("x-"):
                continue
            if key == "$ref" and isinstance(value, str):
                if value.startswith(_LOCAL_SCHEMA_REF):
                    name = value[len(_LOCAL_SCHEMA_REF) :]
                    pending.append(name)
                    out[key] = "#/$defs/" + name.replace("~", "~0").replace("/", "~1")
                else:
                    self.d.problem(
                        (*at, key), "only references to #/components/schemas/... are supported"
                    )
                    out[key] = value
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {k: self._convert(v, (*at, key, k), pending) for k, v in value.items()}
            elif key in _SCHEMA_ONE:
                out[key] = self._convert(value, (*at, key), pending)
            elif key in _SCHEMA_LIST and isinstance(value, list):
                out[key] = [self._convert(v, (*at, key, i), pending) for i, v in enumerate(value)]
            else:
                out[key] = copy.deepcopy(value)
        if self.v30:
            out = self._from_30(out)
        return out

    @staticmethod
    def _from_30(schema: dict[str, Any]) -> dict[str, Any]:
        for bound in ("Minimum", "Maximum"):
            flag = schema.get(f"exclusive{bound}")
            if isinstance(flag, bool):
                del schema[f"exclusive{bound}"]
                if flag and bound.lower() in schema:
                    schema[f"exclusive{bound}"] = schema.pop(bound.lower())
        if schema.pop("nullable", False) is True:
            kind = schema.get("type")
            if isinstance(kind, str):
                schema["type"] = [kind, "null"]
                if isinstance(schema.get("enum"), list) and None not in schema["enum"]:
                    schema["enum"] = [*schema["enum"], None]
            elif kind is None:
                return {"anyOf": [schema, {"type": "null"}]}
        return schema

    def _locate(self, schema_at: JsonPath) -> Callable[[JsonPath], JsonPath]:
        def locate(inner: JsonPath) -> JsonPath:
            if len(inner) >= 2 and inner[0] == "$defs":
                return ("components", "schemas", *inner[1:])
            return (*schema_at, *inner)

        return locate

    def _security(
        self, op: dict[str, Any], at: JsonPath
    ) -> tuple[bool, tuple[str, ...], tuple[str, ...]] | None:
        """(public, providers, scopes) of an operation, or None after a problem."""
        if "security" in op:
            reqs, sat = op["security"], (*at, "security")
        elif "security" in self.d.doc:
            reqs, sat = self.d.doc["security"], ("security",)
        else:
            self.d.problem(
                at, "no security requirement (declare one, or security: [] for a public operation)"
            )
            return None
        if not isinstance(reqs, list):
            self.d.problem(sat, "security must be a list")
            return None
        if not reqs or reqs == [{}]:
            return True, (), ()
        providers: list[str] = []
        scopes: set[str] | None = None
        for i, req in enumerate(reqs):
            if not isinstance(req, dict) or len(req) != 1:
                self.d.problem(
                    (*sat, i),
                    "each security requirement must name exactly one scheme "
                    "(optional or combined schemes are not supported)",
                )
                return None
            ((scheme, needed),) = req.items()
            if scheme not in self.mapping:
                self.d.problem(
                    (*sat, i, scheme),
                    f"security scheme {scheme!r} is not mapped to providers in the policy "
                    "(openapi[].security_schemes)",
                )
                return None
            wanted = {str(s) for s in needed} if isinstance(needed, list) else set()
            if scopes is not None and wanted != scopes:
                self.d.problem(
                    (*sat, i), "alternative requirements with different scopes are not supported"
                )
                return None
            scopes = wanted
            for name in self.mapping[scheme]:
                if name not in providers:
                    providers.append(name)
        return False, tuple(providers), tuple(sorted(scopes or ()))

    def _body(
        self, op: dict[str, Any], at: JsonPath
    ) -> tuple[Any, JsonPath | None, tuple[str, ...], bool]:
        """(schema or None, its path, media types, required)."""
        if "requestBody" not in op:
            return None, None, (JSON_MEDIA_TYPE,), False
        body, bat = self._deref(op["requestBody"], (*at, "requestBody"), "requestBodies")
        if not isinstance(body, dict) or not isinstance(body.get("content"), dict):
            self.d.problem(bat, "a request body needs content")
            return None, None, (JSON_MEDIA_TYPE,), False
        content = body["content"]
        kinds = tuple(str(k).lower() for k in content)
        schemas = [
            (k, v.get("schema"), (*bat, "content", k))
            for k, v in content.items()
            if isinstance(v, dict) and "schema" in v
        ]
        required = bool(body.get("required", False))
        for kind in kinds:
            if "*" in kind:
                self.d.problem((*bat, "content"), f"{kind}: wildcard media types are not supported")
                return None, None, kinds, required
        if not schemas:
            return None, None, kinds, required
        if len(schemas) != len(content):
            self.d.problem((*bat, "content"), "either every media type has a schema or none has")
            return None, None, kinds, required
        first = schemas[0][1]
        for kind, schema, sat in schemas:
            if not readable_body_type(kind.lower()):
                self.d.problem(
                    sat, f"{kind}: a body schema can be enforced for JSON and form bodies only"
                )
                return None, None, kinds, required
            if schema != first:
                self.d.problem(sat, "every media type of a body must have the same schema")
                return None, None, kinds, required
        return first, (*schemas[0][2], "schema"), kinds, required

    def _route(
        self,
        template: str,
        renames: dict[str, str],
        method: str,
        op: dict[str, Any],
        at: JsonPath,
        shared: dict[tuple[str, str], tuple[dict[str, Any], JsonPath]],
    ) -> RouteConfig | None:
        before = len(self.d.problems)
        op_id = op.get("operationId")
        name = str(op_id) if isinstance(op_id, str) and op_id else f"{method}-{template}"
        name = re.sub(r"-{2,}", "-", _NAME_OK.sub("-", name)).strip("-.")[:64] or method
        security = self._security(op, at)
        params = {**shared, **self._param_list(op.get("parameters", []), (*at, "parameters"))}
        specs: list[dict[str, Any]] = []
        for (pname, where_in), (spec, pat) in params.items():
            converted = dict(spec)
            converted["name"] = renames.get(pname, pname) if where_in == "path" else pname
            if "schema" in spec:
                converted["schema"] = self._schema(spec["schema"], (*pat, "schema"))
            specs.append(converted)
        template_params = parse_template(template).params
        declared_path = {s["name"] for s in specs if s["in"] == "path"}
        for pname in renames.values():
            if pname not in declared_path:
                self.d.problem(at, f"path parameter {{{pname}}} is not declared in parameters")
        parameters = build_parameters(
            specs, (*at, "parameters"), self._param_problem(params), self.d.where, template_params
        )
        raw_body, body_at, kinds, required = self._body(op, at)
        body = None
        fields: tuple[tuple[str, str], ...] = ()
        if raw_body is not None and body_at is not None:
            converted_body = self._schema(raw_body, body_at)
            body = make_schema(
                converted_body, body_at, self.d.problem, self.d.where, locate=self._locate(body_at)
            )
            fields = field_classes(raw_body, body_at, self.d.problem, root=self.d.doc)
        declared = op.get(ANNOTATION, "")
        if declared not in ("", *CLASSES):
            self.d.problem((*at, ANNOTATION), f"must be one of {', '.join(CLASSES)}")
            declared = ""
        if security is None or len(self.d.problems) != before:
            return None
        public, providers, scopes = security
        for provider in providers:
            if provider not in self.providers:
                self.d.problem(at, f"no provider named {provider!r} in the policy")
                return None
        limits: BodyLimits = self.defaults.limits
        contract = ContractConfig(
            body=body,
            body_required=required,
            content_types=kinds,
            max_body_bytes=int(self.entry.get("max_body_bytes", self.defaults.max_body_bytes)),
            parameters=parameters,
            unknown_query_parameters=self.entry.get(
                "unknown_query_parameters", self.defaults.unknown_query_parameters
            ),
            limits=limits,
            origin=str(self.d.path),
        )
        return RouteConfig(
            name=name,
            path=template,
            methods=(method.upper(),),
            hosts=tuple(h.lower() for h in self.entry.get("hosts", ())),
            providers=providers,
            scopes=scopes,
            public=public,
            mode=self.entry.get("mode"),
            strip_credential=bool(self.entry.get("strip_credential", False)) and not public,
            credentials=self.entry.get("credentials", "exclusive"),
            location=self.d.where(at),
            contract=contract,
            data_class=effective_class(declared, public, fields),
            declared_data_class=declared,
            field_data_classes=fields,
        )

    def _param_problem(
        self, params: dict[tuple[str, str], tuple[dict[str, Any], JsonPath]]
    ) -> Callable[[JsonPath, str], None]:
        """Problems of build_parameters, placed at each parameter's own position."""
        places = [pat for _, pat in params.values()]

        def problem(jpath: JsonPath, message: str) -> None:
            # jpath is (*at, "parameters", i, ...): i indexes `params` in order
            index = next((p for p in jpath if isinstance(p, int)), None)
            if index is not None and index < len(places):
                rest = jpath[jpath.index(index) + 1 :]
                self.d.problem((*places[index], *rest), message)
            else:
                self.d.problem(jpath, message)

        return problem
