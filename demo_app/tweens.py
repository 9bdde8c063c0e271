"""A tween refusing request bodies larger than ``demo.max_body_bytes`` (413 JSON)."""
from __future__ import annotations

from pyramid.httpexceptions import HTTPRequestEntityTooLarge

from .settings import get_demo_settings
from .views.errors import json_error


def body_limit_tween_factory(handler, registry):
    limit = get_demo_settings(registry).max_body_bytes

    def too_large():
        return json_error(HTTPRequestEntityTooLarge(), f"request body larger than {limit} bytes")

    def body_limit_tween(request):
        length = request.content_length
        if length is not None:
            if length > limit:
                return too_large()
        elif request.is_body_readable:  # chunked or unknown length: read at most limit + 1
            data = request.body_file_raw.read(limit + 1)
            if len(data) > limit:
                return too_large()
            request.body = data
        return handler(request)

    return body_limit_tween
