"""The admin routes and views (see :mod:`pyramid_examcache.admin`).

Every view requires the ``examcache.admin_permission`` permission; every POST requires
Pyramid's CSRF token (``require_csrf=True``: a missing or wrong token is ``400``, checked
after the permission) and answers ``303 See Other`` to a page saying what was done.
Errors on the admin routes (400 bad input, 403, 404, 405, 409) are HTML pages; an anonymous
browser is sent to ``examcache.admin_login_url`` when it is set. Every response carries
``Cache-Control: no-store`` and a Content-Security-Policy that allows no script, no
framing and forms to this site only.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Any
from urllib.parse import urlencode

from pyramid.config import Configurator
from pyramid.csrf import get_csrf_token
from pyramid.exceptions import ConfigurationError
from pyramid.httpexceptions import (
    HTTPBadRequest,
    HTTPConflict,
    HTTPException,
    HTTPForbidden,
    HTTPMethodNotAllowed,
    HTTPNotFound,
    HTTPSeeOther,
)
from pyramid.interfaces import IDefaultCSRFOptions

from ..mail import get_mailer
from ..mail.outbox import CANCELLABLE, CANCELLED_REASON, DELAYED, FAILED, STATES
from . import AdminSettings
from .queries import BadParameter, count_by_state, get_job, list_jobs, parse_job_query

#: pyramid_jinja2 renderer of the admin templates: an environment of its own (autoescape on,
#: settings under ``examcache.admin.jinja2.``, which nobody needs to set), so that the
#: application's ``jinja2.*`` settings (``jinja2.autoescape = false``) cannot reach it
RENDERER = ".examcache_admin"
TEMPLATES = "pyramid_examcache.admin:templates/"

JOBS, JOB, RETRY, CANCEL, CACHE, INVALIDATE, ROOT = (
    "examcache_admin", "examcache_admin_job", "examcache_admin_job_retry",
    "examcache_admin_job_cancel", "examcache_admin_cache", "examcache_admin_cache_invalidate",
    "examcache_admin_root")
PROMOTE = "examcache_admin_job_promote"
ROUTE_NAMES = (JOBS, JOB, RETRY, CANCEL, PROMOTE, CACHE, INVALIDATE, ROOT)

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; "
                                "img-src 'self' data:; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

#: what ``?done=`` says on the page after a POST (fixed texts: nothing of the request is echoed)
DONE = {
    "retried": "The job is waiting again; it is pushed to the queue when this request commits.",
    "cancelled": f"The job was cancelled: failed with the reason “{CANCELLED_REASON}”. "
                 "Retry sends it after all.",
    "promoted": "The job is waiting; it is pushed to the queue when this request commits "
                "and sent now, not at its scheduled time.",
    "key": "The key was invalidated (applied after the commit, like request.cache.invalidate).",
    "tag": "The tag was invalidated (applied after the commit, like request.cache.invalidate).",
}


def _headers(request: Any, response: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value


def _page(request: Any, **values: Any) -> dict[str, Any]:
    """Values every template gets: navigation, the CSRF field, helpers."""
    request.add_response_callback(_headers)
    settings: AdminSettings = request.registry["examcache.admin.settings"]
    options = request.registry.queryUtility(IDefaultCSRFOptions)
    try:
        done = request.GET.get("done") if request.method in ("GET", "HEAD") else None
    except UnicodeDecodeError:
        done = None
    return {
        "nav": [("Mail jobs", request.route_path(JOBS), request.matched_route.name in
                 (JOBS, JOB)),
                ("Cache", request.route_path(CACHE), request.matched_route.name == CACHE)],
        "csrf_name": getattr(options, "token", None) or "csrf_token",
        "csrf_token": get_csrf_token(request) if request.method != "HEAD" else "",
        "done": DONE.get(done or ""),
        "fmt": _fmt_time,
        "permission": settings.permission,
        **values,
    }


def _fmt_time(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _session(request: Any) -> Any:
    return get_mailer(request).session


# -- mail jobs ---------------------------------------------------------------------------------

def jobs_view(request: Any) -> dict[str, Any]:
    try:
        query = parse_job_query(request.GET)
    except BadParameter as exc:
        raise HTTPBadRequest(f"bad parameter {exc.field}: {exc.message}") from None
    except UnicodeDecodeError:
        raise HTTPBadRequest("the query string is not valid UTF-8") from None
    session = _session(request)
    page = list_jobs(session, query)

    def url(**changes: Any) -> str:
        return request.route_path(JOBS, _query=query.params(**changes))

    return _page(request, page=page, query=query, counts=count_by_state(session),
                 states=STATES, url=url,
                 job_url=lambda job_id: request.route_path(JOB, job_id=job_id))


def _job_or_404(request: Any) -> dict[str, Any]:
    job = get_job(_session(request), request.matchdict["job_id"])
    if job is None:
        raise HTTPNotFound("no such mail job (unknown, or purged after mail.keep_completed / "
                           "mail.keep_failed)")
    return job


def job_view(request: Any) -> dict[str, Any]:
    job = _job_or_404(request)
    return _page(request, job=job, can_retry=job["state"] == FAILED,
                 can_cancel=job["state"] in CANCELLABLE,
                 can_promote=job["state"] == DELAYED,
                 retry_url=request.route_path(RETRY, job_id=job["id"]),
                 cancel_url=request.route_path(CANCEL, job_id=job["id"]),
                 promote_url=request.route_path(PROMOTE, job_id=job["id"]),
                 back_url=request.route_path(JOBS))


def _after_post(request: Any, route: str, done: str, **kw: Any) -> HTTPSeeOther:
    """303 to ``route`` saying ``done`` -- returned, not raised: the transaction commits."""
    request.add_response_callback(_headers)
    return HTTPSeeOther(location=request.route_url(route, _query={"done": done}, **kw))


def retry_view(request: Any) -> HTTPSeeOther:
    job = _job_or_404(request)
    if not get_mailer(request).retry(job["id"]):
        raise HTTPConflict(f"only a failed job can be retried; this one is {job['state']}")
    return _after_post(request, JOB, "retried", job_id=job["id"])


def cancel_view(request: Any) -> HTTPSeeOther:
    job = _job_or_404(request)
    if not get_mailer(request).cancel(job["id"]):
        raise HTTPConflict(f"only a waiting or delayed job can be cancelled; this one is "
                           f"{job['state']}")
    return _after_post(request, JOB, "cancelled", job_id=job["id"])


def promote_view(request: Any) -> HTTPSeeOther:
    job = _job_or_404(request)
    if not get_mailer(request).promote(job["id"]):
        raise HTTPConflict(f"only a delayed job can be sent now; this one is {job['state']}")
    return _after_post(request, JOB, "promoted", job_id=job["id"])


# -- cache ---------------------------------------------------------------------------------------

def cache_view(request: Any) -> dict[str, Any]:
    return _page(request, stats=sorted(request.cache.stats().items()), pid=os.getpid(),
                 invalidate_url=request.route_path(INVALIDATE))


def invalidate_view(request: Any) -> HTTPSeeOther:
    given = {name: request.POST.get(name, "").strip() for name in ("key", "tag")}
    given = {name: value for name, value in given.items() if value}
    if len(given) != 1:
        raise HTTPBadRequest("give either a key or a tag to invalidate (field key or tag)")
    (field, value), = given.items()
    try:
        if field == "key":
            request.cache.invalidate(value)
        else:
            request.cache.invalidate(tags=[value])
    except ValueError as exc:  # check_key: empty, too long, control characters, reserved '@'
        raise HTTPBadRequest(f"bad field {field}: {exc}") from None
    return _after_post(request, CACHE, field)


# -- errors, redirects ------------------------------------------------------------------------

def root_redirect(request: Any) -> HTTPSeeOther:
    return HTTPSeeOther(location=request.route_url(JOBS))


def method_not_allowed(methods: tuple[str, ...]):
    allow = ", ".join(methods)

    def view(request: Any) -> None:
        raise HTTPMethodNotAllowed(f"{request.method} is not allowed here; allowed: {allow}",
                                   headers={"Allow": allow})

    return view


TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
          409: "Nothing done"}


def error_view(exc: HTTPException, request: Any) -> Any:
    """HTML for the HTTP errors of the admin routes; anonymous GETs of a forbidden page go
    to ``examcache.admin_login_url`` (with ``next``) when it is set."""
    request.add_response_callback(_headers)
    settings: AdminSettings = request.registry["examcache.admin.settings"]
    if isinstance(exc, HTTPForbidden):
        anonymous = request.authenticated_userid is None
        if anonymous and settings.login_url and request.method in ("GET", "HEAD"):
            separator = "&" if "?" in settings.login_url else "?"
            return HTTPSeeOther(location=settings.login_url + separator
                                + urlencode({"next": request.path_qs}))
        message = (f"This page needs the permission “{settings.permission}”."
                   + (" Log in first." if anonymous else
                      " Your account does not have it."))
    elif getattr(exc, "code", 0) and exc.code >= 500:
        return exc
    else:
        message = exc.detail if isinstance(exc.detail, str) and exc.detail else exc.explanation
        if exc.__class__.__name__ == "BadCSRFToken":
            message = ("The form was not accepted: its CSRF token is missing or wrong "
                       "(check_csrf_token). Reload the page and submit the form again.")
    from pyramid.renderers import render_to_response

    values = _page(request, status=exc.code, title=TITLES.get(exc.code, exc.title),
                   message=message, login_url=settings.login_url
                   if isinstance(exc, HTTPForbidden) else None)
    response = render_to_response(TEMPLATES + "error" + RENDERER, values, request=request)
    response.status = exc.status
    for name in ("Allow",):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response


def bad_encoding_view(exc: UnicodeDecodeError, request: Any) -> Any:
    """A query string or form that is not UTF-8: 400, like any other bad input."""
    return error_view(HTTPBadRequest("the request is not valid UTF-8"), request)


# -- configuration -----------------------------------------------------------------------------

def _check_csrf_storage(registry: Any) -> None:
    from pyramid.csrf import LegacySessionCSRFStoragePolicy, SessionCSRFStoragePolicy
    from pyramid.interfaces import ICSRFStoragePolicy, ISessionFactory

    from ..cache.csrf import unwrap

    policy = unwrap(registry.queryUtility(ICSRFStoragePolicy))
    session_based = isinstance(policy, (LegacySessionCSRFStoragePolicy, SessionCSRFStoragePolicy))
    if policy is None or session_based and registry.queryUtility(ISessionFactory) is None:
        raise ConfigurationError(
            "examcache.admin_path is set: the admin page's forms need Pyramid's CSRF "
            "protection, and this application has no session factory for the default CSRF "
            "storage. Call config.set_session_factory(...) or "
            "config.set_csrf_storage_policy(pyramid.csrf.CookieCSRFStoragePolicy(...))")


def add_admin_views(config: Configurator, settings: AdminSettings) -> None:
    """Routes under ``settings.prefix``, views behind ``settings.permission``."""
    config.include("pyramid_jinja2")
    config.add_jinja2_renderer(RENDERER, settings_prefix="examcache.admin.jinja2.")
    config.registry["examcache.admin.settings"] = settings
    prefix, permission = settings.prefix, settings.permission
    if prefix is None:  # off (includeme adds no views then)
        return
    routes = (
        (ROOT, prefix, ("GET", "HEAD"), root_redirect, None),
        (JOBS, prefix + "/", ("GET", "HEAD"), jobs_view, "jobs"),
        (JOB, prefix + "/jobs/{job_id}", ("GET", "HEAD"), job_view, "job"),
        (RETRY, prefix + "/jobs/{job_id}/retry", ("POST",), retry_view, None),
        (CANCEL, prefix + "/jobs/{job_id}/cancel", ("POST",), cancel_view, None),
        (PROMOTE, prefix + "/jobs/{job_id}/send-now", ("POST",), promote_view, None),
        (CACHE, prefix + "/cache", ("GET", "HEAD"), cache_view, "cache"),
        (INVALIDATE, prefix + "/cache/invalidate", ("POST",), invalidate_view, None),
    )
    for name, pattern, methods, view, template in routes:
        config.add_route(name, pattern)
        renderer = TEMPLATES + template + RENDERER if template else None
        unsafe = "POST" in methods
        config.add_view(view, route_name=name, request_method=methods, permission=permission,
                        renderer=renderer, require_csrf=True if unsafe else None)
        # fewer predicates than the real view: Pyramid tries it last
        config.add_view(method_not_allowed(methods), route_name=name)
        config.add_exception_view(error_view, context=HTTPException, route_name=name)
        config.add_exception_view(bad_encoding_view, context=UnicodeDecodeError, route_name=name)
    config.action(None, lambda: _check_csrf_storage(config.registry), order=10)
