"""``authz envoy-config``: the Envoy bootstrap that fronts this service, from a policy.

The config is built with envoy-data-plane's typed classes (so a misspelt field or a
wrong type fails here, not in Envoy) and serialised to the plain JSON/YAML form
Envoy reads, ``@type`` on every ``Any``.

What it encodes, and why:

- Fail closed: ext_authz with ``failure_mode_allow: false`` and ``status_on_error``
  403, so an unreachable, slow or broken authz service denies.
- One path for Envoy and the service: Envoy normalises the path (dot segments,
  merged slashes, escaped slashes rejected) and rejects headers with underscores
  before anything routes or authorises, and strips any port from the host.
- Routes come from the compiled route plan (:mod:`authz.routeplan`) that
  :class:`authz.routing.Router` is built from: one virtual host per host name the
  policy names (exact, or ``*.suffix``), holding that host's routes plus the routes
  for any host; a ``*`` virtual host with the routes for any host. Within a virtual
  host, routes are emitted in specificity order, so Envoy's first match is the
  service's most specific match. Each ends with a catch-all that still calls the
  service (which answers 404 ``undeclared_route`` or, in monitor mode, allows).
- Public routes skip ext_authz, so Envoy itself removes client-sent copies of the
  identity headers there; everywhere else the service removes them. A public route
  with a contract or rate limits is the exception: it is checked (anonymously) so
  its request is validated and counted.
- The request body goes to the service only on routes whose contract validates it
  (``check_settings.with_request_body``, limited to the contract's ``max_body_bytes``,
  partial bodies refused with 413, raw bytes); buffering stays off everywhere else.
- Optional downstream TLS (``--tls-cert/--tls-key``), TLS 1.2 at least; with a trust
  bundle (``--client-ca``) Envoy verifies client certificates (mTLS, SPIFFE X.509-SVIDs)
  and ext_authz sends the verified identity: ``attributes.source.principal`` (the URI
  SAN) and the URL-encoded PEM in ``attributes.source.certificate``. Which SPIFFE IDs
  may call which route is the policy's decision, not Envoy's: no SAN matchers here.
  ``x-forwarded-client-cert`` from the client is removed (SANITIZE), never forwarded.
- Over HTTP (``--transport http``) with ``--http-secret-file``, every check carries
  the transport secret (``headers_to_add``, overwriting; a client's copy is never
  sent), so the service can tell Envoy's checks from forged ones. The config then
  holds a secret: the file is written readable by its owner only.

Modules, by job: :mod:`.options` (what a deployment gives), :mod:`.extauthz` (the
filter and its per-route settings), :mod:`.routes` (routes from the plan), :mod:`.tls`
(listener TLS and file checks), :mod:`.bootstrap` (the whole config); the command is
:mod:`authz.cli.envoy_config`. The names below are the package's public face.
"""

from __future__ import annotations

from authz.envoyconf.bootstrap import build_bootstrap, build_bootstrap_message, render_yaml
from authz.envoyconf.common import EXT_AUTHZ_FILTER, EnvoyConfigError
from authz.envoyconf.extauthz import HTTP_CHECK_HEADERS, http_check_headers
from authz.envoyconf.options import EnvoyOptions, TlsOptions, parse_timeout
from authz.envoyconf.tls import check_tls_files
from authz.units import HostPort, parse_host_port

__all__ = [
    "EXT_AUTHZ_FILTER",
    "HTTP_CHECK_HEADERS",
    "EnvoyConfigError",
    "EnvoyOptions",
    "HostPort",
    "TlsOptions",
    "build_bootstrap",
    "build_bootstrap_message",
    "check_tls_files",
    "http_check_headers",
    "parse_host_port",
    "parse_timeout",
    "render_yaml",
]
