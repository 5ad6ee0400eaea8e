"""Coverage-guided fuzzing with atheris: ``python -m fuzz.run TARGET [libFuzzer flags]``.

Targets (see fuzz/README.md): checkrequest, checkrequest-struct, http, paths, jwt,
jwt-header, jsonbody. Every libFuzzer flag passes through, for example
``-max_total_time=300`` or ``-runs=100000``; a crash (an oracle's AssertionError or
an unexpected exception) stops the run and writes the input to ``crash-*``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import atheris

with atheris.instrument_imports(include=["authz"]):
    import authz.identity.jwt
    import authz.paths
    import authz.transport.envoy_grpc
    import authz.transport.http_server
    import authz.validation.jsonbody  # noqa: F401

from fuzz import fixtures, targets


class FdpChooser(targets.Chooser):
    """Choices from libFuzzer's bytes (so coverage guides the structure too)."""

    def __init__(self, data: bytes) -> None:
        self.fdp = atheris.FuzzedDataProvider(data)

    def integer(self, lo: int, hi: int) -> int:
        return int(self.fdp.ConsumeIntInRange(lo, hi))

    def blob(self, n: int) -> bytes:
        return bytes(self.fdp.ConsumeBytes(self.fdp.ConsumeIntInRange(0, n)))

    def text(self, n: int) -> str:
        return str(self.fdp.ConsumeUnicodeNoSurrogates(self.fdp.ConsumeIntInRange(0, n)))


def _checkrequest(data: bytes) -> None:
    targets.check_request_bytes(data)


def _checkrequest_struct(data: bytes) -> None:
    targets.check_request(targets.structured_check(FdpChooser(data)))


def _paths(data: bytes) -> None:
    c = FdpChooser(data)
    if c.integer(0, 1):
        path = targets.twist_path(c.pick(targets.PATHS), c)
    else:
        path = c.fdp.ConsumeUnicodeNoSurrogates(len(data))
    targets.check_path(path)


def _jwt(data: bytes) -> None:
    c = FdpChooser(data)
    tokens = list(fixtures.world().tokens.values())
    original = c.pick(tokens)
    mutated = original
    for _ in range(c.integer(1, 3)):
        mutated = targets.mutate_token(mutated, tokens, c)
    targets.check_mutated_token(original, mutated)


def _jwt_header(data: bytes) -> None:
    c = FdpChooser(data)
    dedicated = bool(c.integer(0, 1))
    value = c.fdp.ConsumeUnicodeNoSurrogates(len(data))
    targets.check_authorization(value, dedicated)
    if value.startswith("Bearer ") or c.integer(0, 1):
        targets.check_token(value.removeprefix("Bearer "))


def _jsonbody(data: bytes) -> None:
    targets.check_json_body(data)


_server: Any = None


def _http(data: bytes) -> None:
    from fuzz import http_target

    global _server
    if _server is None:
        _server = http_target.ServerThread()
    c = FdpChooser(data)
    prefix = c.pick(
        [
            b"",
            b"GET /check/v1/orders HTTP/1.1\r\n",
            b"POST /check/v1/orders HTTP/1.1\r\nhost: a\r\n",
        ]
    )
    raw_cuts = [c.integer(0, 1 << 16) for _ in range(c.integer(0, 4))]
    stream = prefix + bytes(c.fdp.ConsumeBytes(c.fdp.remaining_bytes()))
    # the stream split where libFuzzer says: each piece is one read on the server
    cuts = sorted(x % (len(stream) + 1) for x in raw_cuts)
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    http_target.check_http_stream(_server, chunks, gap=0.001)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "checkrequest": _checkrequest,
    "checkrequest-struct": _checkrequest_struct,
    "http": _http,
    "paths": _paths,
    "jwt": _jwt,
    "jwt-header": _jwt_header,
    "jsonbody": _jsonbody,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.run {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target = TARGETS[sys.argv[1]]
    fixtures.world()  # build keys and engine before the clock starts
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
