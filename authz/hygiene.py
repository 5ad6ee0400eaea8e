"""Request hygiene: what a request must not carry past the gateway.

Two stages, registered in :mod:`authz.pipeline`:

- :class:`RequestHygiene` (phase ``request``, once per policy, undeclared paths too):

  - a Host / ``:authority`` that names no single host (empty, two values Envoy merged
    with a comma, a userinfo part ``user@host``, whitespace) -> 400 ``host_ambiguous``;
  - a method override (``X-HTTP-Method-Override``, ``X-HTTP-Method``,
    ``X-Method-Override``, a ``_method`` query parameter) -> 400 ``method_override``, so
    the upstream never runs a method the decision did not see; with
    ``hygiene.method_override: remove`` the headers are removed instead (a query
    parameter cannot be removed on both transports, so it is refused either way);
  - client-sent identity headers (``hygiene.strip_headers``: exact names and
    ``prefix*`` patterns, default :data:`~authz.policy.config.DEFAULT_STRIP_HEADERS`)
    are listed in :attr:`~authz.stages.Context.remove_upstream`: Envoy's
    ``headers_to_remove`` takes names, so the stage names the ones present.

- :class:`EncodingCheck` (phase ``pre``, routes with a contract): a body with a
  ``Content-Encoding`` other than ``identity`` -> 415 ``content_encoding_unsupported``
  (the contract would validate bytes the upstream decodes into something else).

Per request: one dict lookup per header (a bounded table of names already classified;
a new name costs a frozenset lookup and one ``str.startswith`` on a tuple, in C), a few
substring tests on the Host and the query; everything else is built at policy load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

from authz import reasons as R
from authz.errors import AmbiguousRequest, UnsupportedEncoding
from authz.policy.config import HygieneConfig, PolicyConfig, RouteConfig
from authz.stages import Context, Load, Phase

#: Headers that ask a backend (Rails, Laravel, Express method-override, ...) to run
#: another method than the request line's.
METHOD_OVERRIDE_HEADERS = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override"}
)
#: What a header name is to :class:`RequestHygiene` (small ints).
KEEP, STRIP, OVERRIDE = 0, 1, 2
#: Header names whose kind is remembered (a client sending many distinct names only
#: makes the table start over).
MAX_KNOWN_NAMES = 4096
#: The query parameter that does the same (form-based frameworks).
METHOD_OVERRIDE_PARAMETER = "_method"


def strip_patterns(config: HygieneConfig) -> tuple[frozenset[str], tuple[str, ...]]:
    """(exact names, prefixes) of ``config.strip_headers``, lower case."""
    exact = frozenset(n.lower() for n in config.strip_headers if not n.endswith("*"))
    prefixes = tuple(sorted({n[:-1].lower() for n in config.strip_headers if n.endswith("*")}))
    return exact, prefixes


def check_headers(policy: PolicyConfig) -> tuple[list[str], list[str]]:
    """(names, prefixes) of the request headers the hygiene stages read: what an HTTP
    check must carry (:func:`authz.envoyconf.extauthz.http_check_headers`)."""
    exact, prefixes = strip_patterns(policy.hygiene)
    names = [*sorted(exact), *sorted(METHOD_OVERRIDE_HEADERS)]
    if any(r.contract is not None and r.contract.reads_body for r in policy.routes):
        names.append("content-encoding")
    return names, list(prefixes)


def ambiguous_host(host: str, headers: Mapping[str, str]) -> str:
    """Why ``host`` names no single host ("" when it is fine). Empty is refused when the
    request carried one (``host`` or ``:authority`` among its headers, as both transports
    pass them); a Request built without any (tests, replay) has nothing to refuse."""
    if not host:
        return "empty Host" if "host" in headers or ":authority" in headers else ""
    if "," in host:
        return "two Host values"
    if "@" in host:
        return "a userinfo part in the Host"
    if " " in host or "\t" in host:
        return "whitespace in the Host"
    return ""


def has_method_parameter(query: str) -> bool:
    """Whether the raw query has a ``_method`` parameter (any case, percent-encoded too)."""
    if "method" not in query.lower():  # the fast path: most queries never say it
        return False
    for part in query.split("&"):
        name = unquote_plus(part.partition("=")[0])
        if name.lower() == METHOD_OVERRIDE_PARAMETER:
            return True
    return False


class RequestHygiene:
    """Host, method override and client-sent identity headers (see the module docstring)."""

    name = "hygiene"
    phase: Phase = "request"

    def __init__(self, config: HygieneConfig, own: frozenset[str]) -> None:
        exact, prefixes = strip_patterns(config)
        #: exact names to strip, authz's own identity headers excluded (always handled)
        self.exact = exact - own
        self.prefixes = prefixes
        self.own = own
        self.remove_overrides = config.method_override == "remove"
        #: header name -> KEEP, STRIP or OVERRIDE: one lookup per header on the hot path
        #: (bounded: cleared when full, refilled from the rules above)
        self.kinds: dict[str, int] = {}

    def kind(self, name: str) -> int:
        """What ``name`` is (the rules; :attr:`kinds` remembers the answer)."""
        if name in METHOD_OVERRIDE_HEADERS:
            kind = OVERRIDE
        elif name in self.exact or (name.startswith(self.prefixes) and name not in self.own):
            kind = STRIP
        else:
            kind = KEEP
        if len(self.kinds) >= MAX_KNOWN_NAMES:
            self.kinds.clear()
        self.kinds[name] = kind
        return kind

    def step(self, ctx: Context) -> None:
        request = ctx.request
        why = ambiguous_host(request.host, request.headers)
        if why:
            raise AmbiguousRequest(why, reason=R.HOST_AMBIGUOUS)
        if ctx.query and has_method_parameter(ctx.query):
            raise AmbiguousRequest("a _method query parameter", reason=R.METHOD_OVERRIDE)
        kinds = self.kinds
        found: list[str] | None = None
        for name in request.headers:
            kind = kinds.get(name)
            if kind is None:
                kind = self.kind(name)
            if kind == KEEP:
                continue
            if kind == OVERRIDE and not self.remove_overrides:
                raise AmbiguousRequest(f"method override header {name}", reason=R.METHOD_OVERRIDE)
            if found is None:
                found = []
            found.append(name)
        if found is not None:
            ctx.remove_upstream = tuple(found)

    async def check(self, ctx: Context) -> None:
        self.step(ctx)

    def element(self, ctx: Context) -> str:
        return "hygiene"


class RequestHygieneStage:
    name = "hygiene"
    phase: Phase = "request"

    def build(self, load: Load, route: RouteConfig | None) -> RequestHygiene | None:
        if route is not None:
            return None
        return RequestHygiene(load.config.hygiene, frozenset(load.config.headers.all()))


def identity_encoding(value: str) -> bool:
    """Whether a Content-Encoding value leaves the body as it is (only ``identity``)."""
    return all(part.strip().lower() in ("identity", "") for part in value.split(","))


@dataclass(frozen=True, slots=True)
class EncodingCheck:
    """415 for an encoded body on a route whose contract validates bodies."""

    name: str = "content_encoding"
    phase: Phase = "pre"

    def step(self, ctx: Context) -> None:
        request = ctx.request
        encoding = request.headers.get("content-encoding")
        if encoding is None or identity_encoding(encoding):
            return
        if request.body or request.headers.get("content-length", "0") not in ("0", ""):
            raise UnsupportedEncoding(
                R.CONTENT_ENCODING_UNSUPPORTED, "an encoded body", part="header",
                pointer="/content-encoding",
            )  # fmt: skip

    async def check(self, ctx: Context) -> None:
        self.step(ctx)

    def element(self, ctx: Context) -> str:
        return "content-encoding"


class EncodingCheckStage:
    name = "content_encoding"
    phase: Phase = "pre"

    def build(self, load: Load, route: RouteConfig | None) -> EncodingCheck | None:
        if route is None or route.contract is None or not route.contract.reads_body:
            return None
        return EncodingCheck()
