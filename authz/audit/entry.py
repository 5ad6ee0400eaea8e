"""What an audit record holds: a decision record (or a control-plane call) as a dict.

Runs in the audit writer's thread, never on the request path: the engine hands the
:class:`~authz.record.DecisionRecord` (with references to the request and the
identity) and the policy's :class:`AuditView`; everything below is derived here.

Kept, for auditors and for ``authz replay`` (:mod:`authz.audit.replay`):

- the decision: time, request, decision and trace ids, route, decision, status,
  reason, policy version, data class;
- the request's route-relevant shape: method, host, canonical path, the query with
  the values of credential-like parameters replaced by ``[redacted]``, content type
  and length, the client address. These are what routing reads (host, method, path)
  and what an auditor asks (who, from where, what);
- the verified identity: type, provider, subject, issuer, scopes, SPIFFE ID and the
  claims the policy reads (route ``claims`` rules; ``acr``/``auth_time`` when the
  policy can demand step-up) -- what authorization reads, so a candidate policy can
  be asked about it without any credential;
- ``token_digest``: 16 hex digits of SHA-256 naming the credential (for a JWT, of its
  ``header.payload``, the name ``authz revoke`` and the detectors use; for an API key,
  of the key), ``token_iat`` and ``token_exp``.

Never kept: the credential itself, any other header, cookies, the body (it may hold
passwords or personal data; replay therefore does not re-run body validation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from authz.detect.events import credential_digest, token_part
from authz.policy.config import ApiKeyProviderConfig, JwtProviderConfig, PolicyConfig
from authz.record import DecisionRecord

#: query parameter names whose values are never kept (lower case)
SECRET_PARAMETERS = frozenset(
    {"access_token", "id_token", "refresh_token", "token", "api_key", "apikey", "key",
     "password", "passwd", "secret", "client_secret", "code", "signature", "sig", "auth",
     "authorization", "session", "jwt"}
)  # fmt: skip
REDACTED = "[redacted]"
MAX_QUERY = 2048
MAX_CLAIM = 256


@dataclass(frozen=True, slots=True)
class AuditView:
    """What one policy tells the writer: where credentials are, which claims it reads."""

    #: provider name -> (lower-case header carrying its credential, is a JWT)
    credential_headers: Mapping[str, tuple[str, bool]]
    claims_read: tuple[str, ...]


def audit_view(config: PolicyConfig) -> AuditView:
    headers = {
        p.name: (p.header.lower(), isinstance(p, JwtProviderConfig))
        for p in config.providers
        if isinstance(p, JwtProviderConfig | ApiKeyProviderConfig)
    }
    claims = {name for route in config.routes for name, _ in route.claims}
    if config.enforcement is not None:
        claims |= {"acr", "auth_time"}  # step-up reads them
    return AuditView(headers, tuple(sorted(claims)))


def rfc3339(when: float) -> str:
    return (
        datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def redact_query(query: str) -> str:
    """The query as sent, but the values of credential-like parameters replaced (the
    names are decoded to be compared; nothing else is re-encoded)."""
    if not query:
        return ""
    parts = query[:MAX_QUERY].split("&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if eq and name.lower() in SECRET_PARAMETERS:
            parts[i] = part[: part.index("=")] + "=" + REDACTED
    return "&".join(parts)


def _scalar(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str):
        return value[:MAX_CLAIM]
    if isinstance(value, list | tuple):
        return [_scalar(v) for v in value[:32]]
    return str(value)[:MAX_CLAIM]


def decision_entry(
    record: DecisionRecord, view: AuditView | None, at: Any = None
) -> dict[str, Any]:
    """The audit fields of one decision (without ``seq``/``prev``: the chain adds them);
    ``at`` formats a unix time as RFC 3339 (the writer's cached formatter)."""
    request = record.request
    identity = record.identity
    query = ""
    host = ""
    content_type = ""
    content_length = 0
    headers: Mapping[str, str] = {}
    if request is not None:
        host = request.host
        headers = request.headers
        target = request.path
        if "?" in target:
            query = redact_query(target.split("?", 1)[1].split("#", 1)[0])
        content_type = headers.get("content-type", "")[:128]
        body = request.body
        length = headers.get("content-length", "")
        content_length = len(body) if body else int(length) if length.isdigit() else 0
    who: dict[str, Any] = {
        "identity_type": record.identity_type,
        "subject": record.subject,
        "issuer": record.issuer,
        "provider": "",
        "scopes": [],
        "spiffe_id": "",
        "claims": {},
    }
    token_digest = ""
    token_iat: Any = None
    token_exp: Any = None
    if identity is not None and identity.kind != "anonymous":
        claims = identity.claims
        who["provider"] = identity.provider
        who["scopes"] = sorted(identity.scopes)
        if identity.kind == "mtls":
            who["spiffe_id"] = identity.subject
        if view is not None:
            who["claims"] = {n: _scalar(claims[n]) for n in view.claims_read if n in claims}
            header, is_jwt = view.credential_headers.get(identity.provider, ("", False))
            value = headers.get(header) if header else None
            if value:
                token_digest = credential_digest(token_part(value) if is_jwt else value.strip())
        if identity.kind == "jwt":
            token_iat = _scalar(claims.get("iat"))
            token_exp = _scalar(claims.get("exp"))
        elif identity.expires_at is not None:
            token_exp = identity.expires_at
    return {
        "kind": "decision",
        "time": record.time,
        "at": (at or rfc3339)(record.time),
        "request_id": record.request_id,
        "decision_id": record.decision_id,
        "trace_id": record.trace_id,
        "route": record.route,
        "method": record.method,
        "host": host,
        "path": record.path,
        "query": query,
        "content_type": content_type,
        "content_length": content_length,
        "client_address": record.client_address,
        "identity": who,
        "token_digest": token_digest,
        "token_iat": token_iat,
        "token_exp": token_exp,
        "decision": record.decision,
        "status": record.status,
        "reason": record.reason,
        "policy_version": record.policy_version,
        "data_class": getattr(record, "data_class", ""),
    }


def control_entry(
    method: str, caller: str, peer: str, outcome: str, when: float, detail: Mapping[str, Any]
) -> dict[str, Any]:
    """The audit fields of one control-plane call."""
    return {
        "kind": "control",
        "time": when,
        "at": rfc3339(when),
        "method": method,
        "caller": caller,
        "peer": peer,
        "outcome": outcome,
        "detail": {k: _scalar(v) for k, v in detail.items()},
    }


#: request fields of a control-plane call never kept in its audit record
SECRET_FIELDS = frozenset({"body", "certificate", "token", "password", "secret"})


def message_detail(message: Any) -> dict[str, Any]:
    """The fields of a control-plane request (a protobuf message) worth auditing: its
    scalar fields, a URL with credential-like query values redacted, the names (not
    values) of any headers; never a body, certificate or token."""
    detail: dict[str, Any] = {}
    list_fields = getattr(message, "ListFields", None)
    if list_fields is None:
        return detail
    for descriptor, value in list_fields():
        name = descriptor.name
        if name in SECRET_FIELDS:
            detail[name] = f"<{len(value)} bytes>" if isinstance(value, bytes | str) else "<set>"
        elif name == "headers":
            detail[name] = sorted({str(getattr(h, "name", "")) for h in value})
        elif name == "url" and isinstance(value, str) and "?" in value:
            base, _, query = value.partition("?")
            detail[name] = f"{base}?{redact_query(query)}"
        elif isinstance(value, str | int | float | bool):
            detail[name] = value
    return detail
