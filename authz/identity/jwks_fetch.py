"""The default JWKS :data:`~authz.identity.base.Fetcher`: one HTTP(S) GET with urllib
in a worker thread, bounded in size (:data:`MAX_DOCUMENT_BYTES`) and in time (one
deadline for the whole body, not per read), following redirects only to http(s).
"""

from __future__ import annotations

import asyncio
import http.client
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

#: Largest JWKS or discovery document accepted; real ones are a few KiB.
MAX_DOCUMENT_BYTES = 1024 * 1024


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to http(s); urllib would also follow one to ftp://."""

    max_redirections = 3

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"refusing redirect to {newurl!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_RedirectHandler)


def _fetch_blocking(url: str, timeout: float) -> bytes:
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        # Never let a configured or discovered URL read local files (file://) etc.
        raise OSError(f"refusing to fetch non-http(s) URL {url!r}")
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "authz-jwks"}
    )
    # The socket timeout bounds each read, not the whole body: an issuer (or anything
    # in between) that trickles one byte at a time would hold this thread and its
    # connection forever. So the body is read against one deadline for the whole call.
    deadline = time.monotonic() + timeout
    try:
        with _opener.open(request, timeout=timeout) as response:
            status = getattr(response, "status", 200)
            if status != 200:
                raise OSError(f"GET {url}: HTTP {status}")
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_DOCUMENT_BYTES:
                if time.monotonic() >= deadline:
                    raise OSError(f"GET {url}: body not received within {timeout:g}s")
                chunk = response.read1(MAX_DOCUMENT_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            body = b"".join(chunks)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response (and its socket) open otherwise
        raise OSError(f"GET {url}: HTTP {exc.code}") from None
    except (http.client.HTTPException, ValueError) as exc:
        # Protocol errors are not OSError; the Fetcher contract promises OSError.
        raise OSError(f"GET {url}: {exc}") from exc
    if len(body) > MAX_DOCUMENT_BYTES:
        raise OSError(f"GET {url}: response larger than {MAX_DOCUMENT_BYTES} bytes")
    return body


async def fetch_url(url: str, timeout: float) -> bytes:
    """The default :data:`Fetcher`: GET ``url`` with urllib in a worker thread.

    Refuses non-http(s) URLs (also as redirect targets) and bodies over
    :data:`MAX_DOCUMENT_BYTES`; raises :class:`OSError` on any failure.
    """
    return await asyncio.to_thread(_fetch_blocking, url, timeout)
