"""The HTTP transport's wire format and bounds: :class:`HttpLimits` (the ``authz serve
--http-*`` flags), the fixed size caps, one HTTP/1.1 response (:func:`render`, which
keeps header names and values on their line), and the errors of a transport that
cannot be set up as configured. No sockets, no parser: :mod:`authz.transport.http_connection`
reads requests, :mod:`authz.transport.http_server` listens.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_BODY = 8 * 1024 * 1024  # as the gRPC transport's max receive message length
MAX_TARGET_BYTES = 16 * 1024
MAX_HEADER_BYTES = 64 * 1024  # request line + headers
MAX_PIPELINED = 64  # requests queued behind one that waits, per connection

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_STATUS_LINE: dict[int, bytes] = {
    code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()
}
_CRLF_SENSITIVE = str.maketrans({"\r": "%0D", "\n": "%0A", "\x00": "%00"})
_CLOSE = b"connection: close\r\n"


def _status_line(status: int) -> bytes:
    line = _STATUS_LINE.get(status)
    if line is None:
        line = _STATUS_LINE[status] = f"HTTP/1.1 {status} Status {status}\r\n".encode()
    return line


def render(status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool) -> bytes:
    """One HTTP/1.1 response; header names and values cannot break out of their line."""
    text = "".join([f"{k}: {v}\r\n" for k, v in headers])
    n = len(headers)
    if text.count("\n") != n or text.count("\r") != n or "\0" in text:
        # A CR, LF or NUL inside a name or value: escape it rather than split the line.
        text = "".join(
            [
                f"{k.translate(_CRLF_SENSITIVE)}: {v.translate(_CRLF_SENSITIVE)}\r\n"
                for k, v in headers
            ]
        )
    return b"%s%s%s%s\r\n%s" % (
        _status_line(status),
        text.encode("utf-8", "surrogateescape"),
        b"content-length: %d\r\n" % len(body),
        _CLOSE if close else b"",
        body,
    )


def simple(status: int, body: bytes, *, close: bool = False) -> bytes:
    return render(status, [("content-type", "text/plain")], body, close=close)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds and timeouts of the HTTP transport (sizes in bytes, times in seconds)."""

    #: The request target (``/check`` + path + query): 414 above it.
    max_target: int = MAX_TARGET_BYTES
    #: Request line and headers together: 431 above it. Never buffered beyond it.
    max_head: int = MAX_HEADER_BYTES
    #: From the first byte of a request to the end of its headers: 408, closed.
    header_timeout: float = 10.0
    #: From the end of the headers to the end of the body: 408, closed.
    body_timeout: float = 30.0
    #: A connection with no request in progress is closed after this. Keep it above
    #: the idle timeout of the client's pool (the generated Envoy config: 30 s), so
    #: the client closes first and never sends a check on a connection being closed.
    idle_timeout: float = 75.0
    #: Open connections; the ones accepted beyond it are closed at once.
    max_connections: int = 4096

    def __post_init__(self) -> None:
        if not 64 <= self.max_target <= self.max_head:
            raise ValueError(
                f"max_target {self.max_target} must be from 64 to max_head ({self.max_head})"
            )
        if not 1024 <= self.max_head <= 16 * 1024 * 1024:
            raise ValueError(f"max_head {self.max_head} must be from 1024 to 16777216")
        for name in ("header_timeout", "body_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not 0.01 <= value <= 86400:
                raise ValueError(f"{name} {value} must be from 0.01 to 86400 seconds")
        if not 1 <= self.max_connections <= 1_000_000:
            raise ValueError(f"max_connections {self.max_connections} must be from 1 to 1000000")

    @property
    def sweep_interval(self) -> float:
        """How often the sweep looks at the connections: a quarter of the shortest
        timeout, between 50 ms and 1 s."""
        shortest = min(self.header_timeout, self.body_timeout, self.idle_timeout)
        return min(1.0, max(0.05, shortest / 4))


class TransportConfigError(ValueError):
    """The HTTP transport cannot be set up as configured (the message says why)."""


class UntrustedBindError(TransportConfigError):
    """The HTTP transport would take identity headers from anyone who can reach it."""
