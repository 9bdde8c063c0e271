"""What the policy stores: JSON values and HTTP entities, never pickle (G5, design/per-user.md).

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

A ``get_or_set`` value JSON cannot hold (a ``date``, a ``set``, ``Decimal``, NaN, a
cycle, ...) raises :class:`NotJSONValue`, naming the key and where in the value.
Tuples are accepted and come back as lists, and non-string dict keys as strings
(what JSON gives back, on every call: a miss and a bypass return the round trip too).
"""
from __future__ import annotations

import json
import math
from typing import Any

JSON = b"j"
ENTITY = b"h"

#: what :func:`encode_json` accepts, said in every :class:`NotJSONValue`
JSON_RULE = ("get_or_set stores JSON values only: dict (str keys; int, float, bool and None "
             "keys come back as str), list (a tuple comes back as a list), str, int, float "
             "(finite), bool, None")


class NotJSONValue(TypeError):
    """A ``get_or_set`` value that JSON cannot hold (raised by every call, whatever the
    cache's state).  ``key`` the cache key, ``path`` where in the value (``$`` the value
    itself, ``$["a"][0]`` inside it)."""

    def __init__(self, key: str | None, path: str, what: str) -> None:
        self.key, self.path = key, path
        super().__init__(f"cache value for key {key!r} is not JSON: {what} at {path}. "
                         f"{JSON_RULE}; convert it in the creator (e.g. a date to "
                         f"date.isoformat())")


def _not_json(value: Any, path: str, seen: set[int]) -> tuple[str, str] | None:
    """``(path, what)`` of the first part of ``value`` JSON cannot hold, or None."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"the float {value!r}")
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            return path, "a circular reference"
        seen.add(id(value))
        if isinstance(value, dict):
            for k, v in value.items():
                if not (k is None or isinstance(k, (str, int, float, bool))):
                    return f"{path}[{k!r}]", f"a {type(k).__qualname__} dict key"
                found = _not_json(v, f"{path}[{k!r}]", seen)
                if found:
                    return found
        else:
            for i, v in enumerate(value):
                found = _not_json(v, f"{path}[{i}]", seen)
                if found:
                    return found
        seen.discard(id(value))
        return None
    return path, f"a {type(value).__module__}.{type(value).__qualname__}"


def encode_json(value: Any, key: str | None = None) -> bytes:
    """Encode ``value`` as JSON; a value JSON cannot hold raises :class:`NotJSONValue`
    (a ``TypeError``) naming ``key``."""
    try:
        return JSON + json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                                 allow_nan=False).encode()
    except (TypeError, ValueError) as exc:  # ValueError: NaN/infinity, a cycle
        path, what = _not_json(value, "$", set()) or ("$", str(exc))
        raise NotJSONValue(key, path, what) from exc


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
