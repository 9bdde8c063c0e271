"""Every error is JSON: ``{"status": 404, "message": "..."}``, plus ``errors``
(per field) for 400.  A database that is unreachable or too slow (connect,
statement or pool timeout) answers ``503`` with ``Retry-After``
(``demo.db_retry_after``).  Unexpected exceptions are logged and answer a JSON
500 without details; client input must never get there."""
from __future__ import annotations

import logging

from pyramid.httpexceptions import HTTPException, HTTPMethodNotAllowed, HTTPNotFound
from pyramid.response import Response
from pyramid.view import exception_view_config, notfound_view_config
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ..validation import ValidationFailed

log = logging.getLogger(__name__)


def json_error(exc: HTTPException, message: str | None = None, **extra) -> Response:
    """A JSON response with the status (and headers, e.g. Allow) of ``exc``."""
    body = {"status": exc.code, "message": message or exc.detail or exc.title}
    body.update(extra)
    response = Response(json_body=body, status=exc.code, charset="utf-8")
    for name in ("Allow", "WWW-Authenticate", "Retry-After"):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response


@notfound_view_config()
def not_found(exc, request):
    detail = exc.detail if isinstance(exc, HTTPNotFound) and isinstance(exc.detail, str) else None
    # the router's detail is the bare path; a predicate mismatch's names the view
    if detail and (detail == request.path_info or detail.startswith("predicate mismatch")):
        detail = None
    return json_error(HTTPNotFound(), detail or f"no such resource: {request.path_info[:200]}")


@exception_view_config(HTTPException)
def http_error(exc, request):
    return json_error(exc)


@exception_view_config(ValidationFailed)
def validation_failed(exc, request):
    from pyramid.httpexceptions import HTTPBadRequest

    extra = {"errors": exc.errors} if exc.errors else {}
    return json_error(HTTPBadRequest(), exc.message, **extra)


@exception_view_config(UnicodeDecodeError)
def undecodable(exc, request):
    # a path or query string that is not UTF-8 (pyramid's URLDecodeError, webob's GET)
    from pyramid.httpexceptions import HTTPBadRequest

    return json_error(HTTPBadRequest(), "the request URL is not valid UTF-8")


@exception_view_config(OperationalError)
@exception_view_config(InterfaceError)
@exception_view_config(PoolTimeoutError)
def database_unavailable(exc, request):
    """The database could not be reached, timed out or cancelled a slow statement."""
    from pyramid.httpexceptions import HTTPServiceUnavailable

    from ..settings import get_demo_settings

    log.warning("database unavailable on %s %s: %s", request.method, request.path_qs[:300],
                str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
    retry_after = str(get_demo_settings(request).db_retry_after)
    return json_error(HTTPServiceUnavailable(headers={"Retry-After": retry_after}),
                      "the database is unavailable; try again later")


@exception_view_config(Exception)
def server_error(exc, request):
    log.error("unhandled error on %s %s", request.method, request.path_qs[:300],
              exc_info=(type(exc), exc, exc.__traceback__))
    response = Response(json_body={"status": 500, "message": "internal server error"},
                        status=500, charset="utf-8")
    return response


def method_not_allowed(methods: tuple[str, ...]):
    allow = ", ".join(methods)

    def view(request):
        raise HTTPMethodNotAllowed(f"method {request.method} not allowed; allowed: {allow}",
                                   headers={"Allow": allow})

    return view
