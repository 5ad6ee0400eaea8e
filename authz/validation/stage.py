"""The contract stage (``post``): a route's request must match its contract.

Checks, cheapest first; the first failure denies:

1. a body Envoy marked partial (``x-envoy-auth-partial-body: true``) -> 413
   ``body_partial``: a truncated body is never validated as if whole;
2. size (``content-length`` and the bytes received) -> 413 ``body_too_large``;
3. media type of a non-empty body -> 415 ``unsupported_media_type``;
4. path, query and header parameters -> 400 ``parameter_missing``, ``parameter_invalid``,
   ``parameter_duplicate``, ``parameter_unknown``, ``query_malformed``;
5. the body: read strictly (:mod:`.jsonbody`, :mod:`.form`) -> 400 ``body_malformed``,
   ``body_duplicate_key``, ``body_limit_exceeded``, ``body_missing``; then its schema ->
   400 ``body_invalid`` or, for a member the schema does not allow, ``body_unknown_field``.

Deny bodies carry ``in`` (body, query, path, header) and ``location`` (a JSON
pointer into that part), never the offending value. Everything is compiled when the
policy is loaded. In monitor mode, parameters and body fields the contract does not
declare are recorded in the inventory as drift before the checks run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from authz import reasons as R
from authz.errors import BodyTooLarge, ContractViolation, UnsupportedMediaType
from authz.inventory import Inventory, shared_inventory
from authz.pathtemplate import LITERAL, REST, parse_template
from authz.policy.config import FORM_MEDIA_TYPE, ContractConfig, Parameter, RouteConfig
from authz.stages import Check, Context, Load, Phase
from authz.validation.drift import undeclared_fields
from authz.validation.jsonbody import parse_json
from authz.validation.params import (
    Converter,
    DuplicateParameter,
    NotConvertible,
    converter_for,
    group,
    parse_pairs,
    properties_of,
    violation,
)
from authz.validation.schema import Validator, compile_text

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"


def media_type(header: str) -> tuple[str, str]:
    """(type/subtype, charset) of a Content-Type value, lower case."""
    kind, _, params = header.partition(";")
    charset = ""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return kind.strip().lower(), charset


def is_json_type(kind: str) -> bool:
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


class _Param:
    __slots__ = ("converter", "name", "required", "validator", "where")

    def __init__(self, param: Parameter, *, repeatable: bool) -> None:
        self.name = param.name
        self.where = param.where
        self.required = param.required
        schema: Mapping[str, Any] | None = None
        self.validator: Validator | None = None
        if param.schema is not None:
            self.validator = compile_text(param.schema.text)
            schema = self.validator.schema
        defs = schema.get("$defs", {}) if schema is not None else {}
        self.converter: Converter = converter_for(schema, defs, repeatable=repeatable)

    def check(self, values: list[str]) -> None:
        try:
            value = self.converter.convert(values)
        except DuplicateParameter:
            raise violation(
                R.PARAMETER_DUPLICATE, self.where, self.name, "given more than once"
            ) from None
        except NotConvertible:
            raise violation(
                R.PARAMETER_INVALID, self.where, self.name, "not of the declared type"
            ) from None
        if self.validator is not None and not self.validator.is_valid(value):
            raise violation(R.PARAMETER_INVALID, self.where, self.name, "does not match its schema")


class ContractCheck:
    """The compiled contract of one route; calling it checks one request."""

    def describe(self) -> str:
        """For explain (a deny names its location instead)."""
        return f"routes.{self.route.name}.contract"

    def __init__(
        self, route: RouteConfig, contract: ContractConfig, *, monitor: bool, inventory: Inventory
    ) -> None:
        self.route = route
        self.contract = contract
        self.limits = contract.limits
        self.max_body = contract.max_body_bytes
        self.types = frozenset(contract.content_types)
        self.monitor = monitor
        self.inventory = inventory
        self.body = compile_text(contract.body.text) if contract.body is not None else None
        self.body_required = contract.body_required
        params = contract.parameters
        self.query = {p.name: _Param(p, repeatable=True) for p in params if p.where == "query"}
        self.headers = [_Param(p, repeatable=False) for p in params if p.where == "header"]
        self.deny_unknown_query = contract.unknown_query_parameters == "deny"
        template = parse_template(route.path)
        declared_path = {p.name: p for p in params if p.where == "path"}
        self.path: list[tuple[int, bool, _Param]] = []
        for index, (kind, name) in enumerate(template.segments):
            if kind != LITERAL and name in declared_path:
                param = _Param(declared_path[name], repeatable=False)
                self.path.append((index + 1, kind == REST, param))
        self.form_fields: dict[str, Converter] = {}
        if self.body is not None and FORM_MEDIA_TYPE in self.types:
            schema = self.body.schema
            defs = schema.get("$defs", {})
            for name, sub in properties_of(schema, defs).items():
                if isinstance(sub, Mapping):
                    self.form_fields[name] = converter_for(sub, defs, repeatable=True)

    async def __call__(self, ctx: Context) -> None:
        request = ctx.request
        headers = request.headers
        body = request.body
        if headers.get(PARTIAL_BODY_HEADER, "").lower() == "true":
            raise BodyTooLarge(R.BODY_PARTIAL, "Envoy sent part of the body", part="body")
        length = headers.get("content-length", "")
        declared_length = int(length) if length.isdigit() and len(length) < 16 else 0
        if len(body) > self.max_body or declared_length > self.max_body:
            raise BodyTooLarge(R.BODY_TOO_LARGE, f"more than {self.max_body} bytes", part="body")
        has_body = bool(body) or declared_length > 0 or "transfer-encoding" in headers
        kind = charset = ""
        if has_body:
            kind, charset = media_type(headers.get("content-type", ""))
            if kind not in self.types or charset not in ("", "utf-8"):
                raise UnsupportedMediaType(
                    R.UNSUPPORTED_MEDIA_TYPE,
                    "media type not allowed",
                    part="header",
                    pointer="/content-type",
                )
        if self.monitor:
            self._record_drift(ctx, kind)
        self._check_parameters(ctx)
        if self.body is None:
            return
        if not body:
            if self.body_required:
                raise ContractViolation(R.BODY_MISSING, "a body is required", part="body")
            return
        instance = self._read_body(body, kind)
        if not self.body.is_valid(instance):
            failure = self.body.first_failure(instance)
            pointer = failure.pointer if failure is not None else ""
            reason = R.BODY_UNKNOWN_FIELD if failure and failure.unknown_field else R.BODY_INVALID
            raise ContractViolation(
                reason, "does not match the schema", part="body", pointer=pointer
            )

    # -- parts -------------------------------------------------------------------------

    def _query(self, ctx: Context) -> dict[str, list[str]]:
        try:
            return group(parse_pairs(ctx.query, max_fields=self.limits.max_fields))
        except OverflowError:
            raise ContractViolation(
                R.QUERY_MALFORMED, "too many query parameters", part="query"
            ) from None
        except ValueError:
            raise ContractViolation(
                R.QUERY_MALFORMED, "invalid escape or UTF-8", part="query"
            ) from None

    def _check_parameters(self, ctx: Context) -> None:
        if self.path:
            segments = ctx.path.split("/")
            for index, rest, param in self.path:
                raw = "/".join(segments[index:]) if rest else segments[index]
                param.check([unquote(raw, errors="strict")])
        if self.query or self.deny_unknown_query:
            given = self._query(ctx) if ctx.query else {}
            for name, param in self.query.items():
                values = given.get(name)
                if values is None:
                    if param.required:
                        raise violation(R.PARAMETER_MISSING, "query", name, "required")
                    continue
                param.check(values)
            if self.deny_unknown_query:
                for name in given:
                    if name not in self.query:
                        raise violation(R.PARAMETER_UNKNOWN, "query", name, "not declared")
        headers = ctx.request.headers
        for param in self.headers:
            value = headers.get(param.name)
            if value is None:
                if param.required:
                    raise violation(R.PARAMETER_MISSING, "header", param.name, "required")
                continue
            param.check([value])

    def _read_body(self, body: bytes, kind: str) -> Any:
        if kind == FORM_MEDIA_TYPE:
            return self._read_form(body)
        return parse_json(body, self.limits)

    def _read_form(self, body: bytes) -> dict[str, Any]:
        try:
            text = body.decode("utf-8")
            pairs = parse_pairs(text, max_fields=self.limits.max_fields)
        except OverflowError:
            raise ContractViolation(
                R.BODY_LIMIT_EXCEEDED, f"more than {self.limits.max_fields} fields", part="body"
            ) from None
        except ValueError:
            raise ContractViolation(
                R.BODY_MALFORMED, "invalid escape or UTF-8 in a form", part="body"
            ) from None
        fields: dict[str, Any] = {}
        plain = Converter(scalar=())
        for name, values in group(pairs).items():
            converter = self.form_fields.get(name, plain)
            try:
                fields[name] = converter.convert(values)
            except DuplicateParameter:
                raise violation(
                    R.BODY_DUPLICATE_KEY, "body", name, "form field given twice"
                ) from None
            except NotConvertible:
                raise violation(
                    R.BODY_INVALID, "body", name, "form field not of its type"
                ) from None
        return fields

    def _record_drift(self, ctx: Context, kind: str) -> None:
        query: list[str] = []
        if ctx.query:
            try:
                query = [n for n in self._query(ctx) if n not in self.query]
            except ContractViolation:
                query = []
        fields: list[str] = []
        body = ctx.request.body
        if self.body is not None and body:
            try:
                instance = self._read_body(body, kind)
            except ContractViolation:
                instance = None
            if isinstance(instance, dict | list):
                fields = undeclared_fields(instance, self.body.schema)
        if query or fields:
            self.inventory.drift(self.route, ctx.request.method, query=query, body=fields)


class ValidationStage:
    """Builds a route's :class:`ContractCheck` (None for routes without a contract)."""

    name = "validation"
    phase: Phase = "post"

    def build(self, load: Load, route: RouteConfig | None) -> Check | None:
        policy, shared = load.config, load.shared
        if route is None or route.contract is None:
            return None
        mode = route.mode or policy.mode
        return ContractCheck(
            route, route.contract, monitor=mode == "monitor", inventory=shared_inventory(shared)
        )
