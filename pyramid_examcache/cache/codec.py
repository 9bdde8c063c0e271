"""What the policy stores: JSON values and rendered responses, never pickle (G5).

A stored value is ``b"j"`` + UTF-8 JSON, or ``b"r"`` + the Content-Type
header + ``b"\\n"`` + the body bytes of a rendered response, which a hit
serves as they are, without decoding or re-rendering.
"""
from __future__ import annotations

import json
from typing import Any

JSON = b"j"
RESPONSE = b"r"


def encode_json(value: Any) -> bytes:
    """Encode ``value`` as JSON; a value JSON cannot hold raises ``TypeError``."""
    return JSON + json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                             allow_nan=False).encode()


def decode_json(data: bytes) -> Any:
    if data[:1] != JSON:
        raise ValueError("stored value is not a JSON value")
    return json.loads(data[1:])


def encode_response(content_type: str, body: bytes) -> bytes:
    if "\n" in content_type or "\r" in content_type:
        raise ValueError("bad content type")
    return RESPONSE + content_type.encode("latin-1") + b"\n" + body


def decode_response(data: bytes) -> tuple[str, bytes]:
    """Return ``(content_type, body)``; the body is a slice, not a re-encoding."""
    if data[:1] != RESPONSE:
        raise ValueError("stored value is not a response")
    head, _, body = data.partition(b"\n")
    return head[1:].decode("latin-1"), body
