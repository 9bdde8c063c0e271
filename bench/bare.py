"""The ``bare`` throughput target: the physical limit of this server.

A plain WSGI callable on waitress (the same threads as every other target) that
answers every request with the response the demo's cached page returns: the same
body bytes and the same headers (``Content-Type``, ``Cache-Control``, ``ETag``,
``Vary``, ... captured from the demo over HTTP by the bench and written to a JSON
file; waitress adds ``Date``/``Server`` itself, as it does for the demo).  No
Pyramid, no routing, no WebOb: what is left is waitress's own cost of sending
~47 kB, the ceiling any framework-level fast path can approach.

``python -m bench.serve bare --response FILE --port P --threads T``.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable

#: hop-by-hop or per-response headers waitress writes itself
_SKIP = {"date", "server", "connection", "content-length", "transfer-encoding", "keep-alive"}


def save_response(path: str, body: bytes, headers: dict[str, str]) -> None:
    """Write what the bare app must answer (``headers``: the demo's, lower-cased names)."""
    keep = [(k, v) for k, v in headers.items() if k.lower() not in _SKIP]
    with open(path, "w") as fh:
        json.dump({"body": base64.b64encode(body).decode(), "headers": keep}, fh)


def make_app(path: str) -> Callable:
    """The bare WSGI app answering the saved response to every request."""
    with open(path) as fh:
        saved = json.load(fh)
    body = base64.b64decode(saved["body"])
    headers = [(str(k), str(v)) for k, v in saved["headers"]]
    headers.append(("Content-Length", str(len(body))))
    chunks = [body]

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        start_response("200 OK", list(headers))
        return chunks

    return app
