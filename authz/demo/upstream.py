"""A tiny upstream for the demo and the end-to-end tests.

Answers every request with 200 and a JSON echo of what it received (method,
path, headers, body length), so a test can see exactly which headers Envoy
forwarded after the authz decision. A request may ask for another status
(``x-echo-status: 404``) or a slower answer (``x-echo-delay-ms: 50``, at most 5 s):
the access-log feed's tests need an upstream whose status and latency are not
authz's.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "authz-demo-upstream"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        payload = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_bytes": len(body),
            },
            indent=2,
        ).encode()
        delay = _int(self.headers.get("x-echo-delay-ms"), 0, 5000)
        if delay:
            time.sleep(delay / 1000)
        self.send_response(_int(self.headers.get("x-echo-status"), 200, 599, default=200))
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _echo

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _int(text: str | None, low: int, high: int, default: int = 0) -> int:
    try:
        value = int(text) if text else default
    except ValueError:
        return default
    return value if low <= value <= high else default


class EchoUpstream:
    """The echo server in a background thread (port 0 picks a free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> EchoUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m authz.demo.upstream")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        server = ThreadingHTTPServer((args.host, args.port), _Handler)
    except OSError as exc:
        print(
            f"upstream: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    server.daemon_threads = True

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"upstream echo on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
