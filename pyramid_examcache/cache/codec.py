"""What the policy stores: JSON values and HTTP entities, never pickle (G5).

A stored value is one of

* ``b"j"`` + UTF-8 JSON: a ``get_or_set`` value;
* ``b"h"`` + a JSON *head* + ``b"\\n"`` + the body bytes: a cached view's
  response.  The head is ``{"e": etag, "h": [[name, value], ...]}`` (the
  headers replayed on a hit, :mod:`.http`); JSON never writes a raw newline, so
  the first ``b"\\n"`` ends the head.  A hit serves the body as a slice of the
  stored bytes, without decoding or re-rendering, and reads the ETag from the
  head without touching the body (what a ``304`` needs).

The two kinds live in separate key namespaces (:mod:`.variants`), so a view and
a ``get_or_set`` using the same key template never read each other's values;
a decoder handed the wrong kind raises ``ValueError`` (the callers treat that as
a miss they do not store over, never as a 500).
"""
from __future__ import annotations

import json
from typing import Any

JSON = b"j"
ENTITY = b"h"


def encode_json(value: Any) -> bytes:
    """Encode ``value`` as JSON; a value JSON cannot hold raises ``TypeError``."""
    return JSON + json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                             allow_nan=False).encode()


def decode_json(data: bytes) -> Any:
    if data[:1] != JSON:
        raise ValueError("stored value is not a JSON value")
    return json.loads(data[1:])


def encode_entity(etag: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = json.dumps({"e": etag, "h": headers}, separators=(",", ":"), ensure_ascii=True)
    return ENTITY + head.encode("ascii") + b"\n" + body


def decode_head(data: bytes) -> tuple[str, list[tuple[str, str]], int]:
    """``(etag, headers, offset of the body)`` -- reads the head only."""
    if data[:1] != ENTITY:
        raise ValueError("stored value is not an HTTP entity")
    end = data.find(b"\n")
    if end < 0:
        raise ValueError("stored entity has no head")
    head = json.loads(data[1:end])
    return head["e"], [(str(n), str(v)) for n, v in head["h"]], end + 1


def decode_entity(data: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """``(etag, headers, body)``; the body is a slice, not a re-encoding."""
    etag, headers, offset = decode_head(data)
    return etag, headers, data[offset:]
