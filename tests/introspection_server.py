"""A small real RFC 7662 introspection endpoint for tests (a thread, a real socket)."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


class IntrospectionServer:
    """Answers POST /introspect for the tokens in :attr:`tokens` (token -> answer);
    anything else is ``{"active": false}``. Checks the client's Basic credentials."""

    def __init__(self, client_id: str = "authz", secret: str = "s3cret") -> None:
        self.tokens: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.delay = 0.0
        self.expected = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.calls += 1
                if owner.delay:
                    time.sleep(owner.delay)
                length = int(self.headers.get("content-length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                if self.headers.get("authorization") != owner.expected:
                    self._send(401, {"error": "invalid_client"})
                    return
                token = form.get("token", [""])[0]
                self._send(200, owner.tokens.get(token, {"active": False}))

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/introspect"

    def start(self) -> IntrospectionServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
