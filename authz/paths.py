"""Canonical request paths.

A path is canonicalised once per request, the same way the generated Envoy
config normalises it (``normalize_path``, ``merge_slashes``, escaped slashes
rejected), so Envoy and the service never disagree on which route a request is:

- the query is split off;
- unreserved percent-escapes (``A-Z a-z 0-9 - . _ ~``) are decoded and the hex
  digits of the others upper-cased;
- dot segments are removed (RFC 3986 5.2.4), then repeated slashes merged: the
  order Envoy applies ``normalize_path`` and ``merge_slashes`` in, so ``..`` after
  ``//`` removes the empty segment (``/a//../b`` is ``/a/b``).

Paths that cannot be read unambiguously raise :class:`~authz.errors.InvalidPath`:
an encoded ``/`` or ``\\``, an encoded dot segment, NUL or another control
character (raw or encoded), invalid UTF-8 in the escapes, a raw backslash or a
raw non-ASCII character, a fragment, a malformed escape, a dot segment with a
parameter (``..;`` or ``.;``: Envoy and servlet containers resolve it as a dot
segment, others as a name), or a target that is not an absolute path.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from authz.errors import InvalidPath

# A path that holds none of these is already canonical: the fast path.
_NEEDS_WORK = re.compile(r"[%\\#\x00-\x20\x7f]|//|/\.\.?(?:[/;]|$)")
# A segment that is '.' or '..' followed by a path parameter.
_DOT_PARAMETER = re.compile(r"(?:^|/)\.\.?;")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{0,2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def split_target(target: str) -> tuple[str, str]:
    """Split a request target into (path, query); the query has no leading '?'."""
    path, _, query = target.partition("?")
    return path, query


def canonicalize(target: str) -> tuple[str, str]:
    """Return (canonical path, raw query) for a request target, or raise InvalidPath."""
    path, query = split_target(target)
    if not path.startswith("/"):
        raise InvalidPath("the request target is not an absolute path")
    if not path.isascii():
        raise InvalidPath("raw non-ASCII character in the path")
    if "#" in query:
        raise InvalidPath("fragment in the request target")
    if _NEEDS_WORK.search(path) is None:
        return path, query
    if "#" in path:
        raise InvalidPath("fragment in the request target")
    if "\\" in path:
        raise InvalidPath("backslash in the path")
    for ch in path:
        if ch <= " " or ch == "\x7f":
            raise InvalidPath("control character or space in the path")
    if "%" in path:
        path = _decode_unreserved(path)
    if ";" in path and _DOT_PARAMETER.search(path):
        raise InvalidPath("dot segment with a parameter (';') in the path")
    return _remove_dot_segments(path), query


def _decode_unreserved(path: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _ESCAPE.finditer(path):
        hexdigits = m.group(1)
        if len(hexdigits) != 2:
            raise InvalidPath("malformed percent-escape in the path")
        byte = int(hexdigits, 16)
        if byte in (0x2F, 0x5C):
            raise InvalidPath("encoded '/' or '\\' in the path")
        if byte < 0x20 or byte == 0x7F:
            raise InvalidPath("encoded control character in the path")
        out.append(path[pos : m.start()])
        out.append(chr(byte) if byte in _UNRESERVED else "%" + hexdigits.upper())
        pos = m.end()
    out.append(path[pos:])
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPath("percent-escapes that are not valid UTF-8") from exc
    decoded = "".join(out)
    # An encoded dot segment ('%2e', '.%2E', ...) is a classic traversal trick: we
    # could resolve it, but a backend that decodes again might not agree.
    if "%2e" in path.lower():
        for original, seg in zip(path.split("/"), decoded.split("/"), strict=True):
            if seg in (".", "..") and "%" in original:
                raise InvalidPath("encoded dot segment in the path")
    return decoded


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 5.2.4 over the segments after the leading '/', empty ones included
    # (a '..' after '//' removes the empty segment, as in Envoy); then '//' merged.
    segments = path.split("/")[1:]
    stack: list[str] = []
    for seg in segments:
        if seg == ".":
            continue
        if seg == "..":
            if stack:
                stack.pop()
            continue
        stack.append(seg)
    if segments[-1] in (".", ".."):
        stack.append("")  # '/a/b/..' is '/a/', '/a/.' is '/a/'
    result = "/" + "/".join(stack)
    if "//" in result:
        result = _SLASHES.sub("/", result)
    return result


_SLASHES = re.compile("/{2,}")


_ID_SEGMENT = re.compile(
    r"^(?:[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,})$"
)


def path_shape(path: str) -> str:
    """Collapse numeric, UUID and long hex segments: /v1/users/42 -> /v1/users/{id}."""
    return "/".join("{id}" if _ID_SEGMENT.match(seg) else seg for seg in path.split("/"))
