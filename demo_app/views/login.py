"""``GET/POST /login`` and ``POST /logout``: the browser's way in (HTML forms, no JavaScript).

A successful login sets the ``demo_auth`` cookie (HttpOnly, SameSite=Lax, Secure when
``demo.public_url`` is https) holding the same signed token ``POST /api/auth/login``
answers; the security policy accepts it outside ``/api/`` (the admin page). Both forms
carry Pyramid's CSRF token (``require_csrf=True``; the token lives in the ``demo_csrf``
cookie, ``CookieCSRFStoragePolicy``), and a login is throttled like the API's.
"""
from __future__ import annotations

from pyramid.csrf import get_csrf_token, new_csrf_token
from pyramid.httpexceptions import HTTPException, HTTPSeeOther, HTTPTooManyRequests
from pyramid.renderers import render_to_response
from pyramid.security import forget, remember
from pyramid.view import exception_view_config, view_config
from sqlalchemy import select

from ..models import User
from ..security import check_password, hash_password
from ..validation import PASSWORD_MAX
from .auth import throttle_login

TEMPLATE = "demo_app:templates/login.jinja2"
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def safe_next(value) -> str:
    """Where to go after logging in: a path on this site, else ``/`` (no open redirect)."""
    if (isinstance(value, str) and value.startswith("/") and not value.startswith(("//", "/\\"))
            and len(value) <= 2000 and value.isascii()
            and not any(c in value for c in "\\ \t\r\n") and value.isprintable()):
        return value
    return "/"


def login_page(request, status: int = 200, message: str | None = None, email: str = ""):
    user = request.identity
    values = {
        "user": user,
        "next": safe_next(request.params.get("next")),
        "email": email,
        "message": message,
        "csrf_token": get_csrf_token(request),
        "admin_path": request.registry.settings.get("examcache.admin_path"),
    }
    response = render_to_response(TEMPLATE, values, request=request)
    response.status_int = status
    response.headers.update(PAGE_HEADERS)
    return response


@view_config(route_name="login_page", request_method=("GET", "HEAD"))
def login_form(request):
    return login_page(request)


@view_config(route_name="login_page", request_method="POST", require_csrf=True)
def login_submit(request):
    email = request.POST.get("email", "").strip().lower()
    password = request.POST.get("password", "")
    if not email or len(email) > 254 or not email.isprintable() or not password \
            or len(password) > PASSWORD_MAX:
        return login_page(request, 400, "Enter your email address and password.", email[:254])
    try:
        throttle_login(request, email)
    except HTTPTooManyRequests as exc:
        response = login_page(request, 429, "Too many login attempts; try again later.", email)
        response.headers["Retry-After"] = exc.headers["Retry-After"]
        return response
    hasher = request.registry["demo.password_hasher"]
    user = request.dbsession.scalar(select(User).where(User.email == email))
    if not check_password(hasher, user.password_hash if user else None, password):
        return login_page(request, 401, "Invalid email or password.", email)
    if not user.verified:
        return login_page(request, 403, "Verify your email address before logging in.", email)
    if hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(hasher, password)
    new_csrf_token(request)  # a fresh token for the new identity
    return HTTPSeeOther(location=safe_next(request.POST.get("next")),
                        headers=remember(request, user.id))


@view_config(route_name="logout", request_method="POST", require_csrf=True)
def logout(request):
    new_csrf_token(request)
    return HTTPSeeOther(location=request.route_url("login_page"), headers=forget(request))


@exception_view_config(HTTPException, route_name="login_page")
@exception_view_config(HTTPException, route_name="logout")
def login_error(exc, request):
    """The forms' errors as the login page (a stale CSRF token, a wrong method), not JSON."""
    if exc.code == 400:  # BadCSRFToken: the only 400 these views raise
        message = "The form expired (its CSRF token is missing or wrong); please try again."
    else:
        message = exc.detail if isinstance(exc.detail, str) else exc.title
    response = login_page(request, exc.code, message)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response
