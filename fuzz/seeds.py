"""Seed corpora for the atheris targets: ``python -m fuzz.seeds OUTDIR``.

Random bytes almost never decode as a CheckRequest with a path, or parse as an
HTTP request: libFuzzer mutates these instead (OUTDIR/<target>/, one file each).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from fuzz import targets

_JSON = [
    {"items": [{"sku": "a", "qty": 1}], "note": "n"},
    [1, 2.5, -0.0, 1e300, True, False, None, "\u00e9\U0001f600"],
    {"a": {"b": {"c": [[[]]]}}},
    "text",
    12345678901234567890,
]
_HTTP = [
    b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n",
    b"GET /check/v1/orders HTTP/1.1\r\nhost: a\r\nauthorization: Bearer x.y.z\r\n\r\n",
    b'POST /check/v1/orders?dry_run=true HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{"items": []}',
    b"POST /check/v1/orders HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /check/v1/orders/1 HTTP/1.1\r\nhost: a\r\n\r\nGET /check/v1/beta HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    b"GET /check/v1/orders HTTP/1.0\r\n\r\n",
]


def _write(directory: Path, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.exit("usage: python -m fuzz.seeds OUTDIR")
    out = Path(argv[0])
    for seed in range(200):
        check = targets.structured_check(targets.RandomChooser(seed))
        _write(out / "checkrequest", check.SerializeToString())
    for doc in _JSON:
        _write(out / "jsonbody", json.dumps(doc).encode())
        _write(out / "jsonbody", json.dumps(doc, indent=1, ensure_ascii=False).encode())
    for request in _HTTP:
        _write(out / "http", request)
    print(f"seed corpora in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
