"""``GET/POST /login`` and ``POST /logout``: the browser's way in (HTML forms, no JavaScript).

A successful login sets the ``demo_auth`` cookie (HttpOnly, SameSite=Lax, Secure when
``demo.public_url`` is https) holding the same signed token ``POST /api/auth/login``
answers; the security policy accepts it outside ``/api/`` (the admin page). Both forms
carry a CSRF token the server issued (``require_csrf=True``;
:class:`demo_app.security.SignedCSRFStoragePolicy`: bound to the signed ``demo_csrf``
visitor cookie and the login, ``Origin`` checked), and a login is throttled like the
API's.  ``POST /logout`` revokes every login token of the user (cookies and bearer
tokens alike: the user's token generation is bumped).
"""
from __future__ import annotations

from pyramid.csrf import get_csrf_token, new_csrf_token
from pyramid.exceptions import BadCSRFOrigin
from pyramid.httpexceptions import HTTPException, HTTPSeeOther, HTTPTooManyRequests
from pyramid.renderers import render_to_response
from pyramid.security import forget, remember
from pyramid.view import exception_view_config, view_config

from ..validation import PASSWORD_MAX
from .auth import authenticate

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
        user = authenticate(request, email, password)
    except HTTPTooManyRequests as exc:
        response = login_page(request, 429, "Too many login attempts; try again later.", email)
        response.headers["Retry-After"] = exc.headers["Retry-After"]
        return response
    if user is None:
        return login_page(request, 401, "Invalid email or password.", email)
    if not user.verified:
        return login_page(request, 403, "Verify your email address before logging in.", email)
    new_csrf_token(request)  # a fresh token for the new identity
    return HTTPSeeOther(location=safe_next(request.POST.get("next")),
                        headers=remember(request, user.id))


@view_config(route_name="logout", request_method="POST", require_csrf=True)
def logout(request):
    user = request.identity
    if user is not None:
        user.revoke_logins()  # this cookie and every bearer token of the user stop working
    new_csrf_token(request)
    return HTTPSeeOther(location=request.route_url("login_page"), headers=forget(request))


@exception_view_config(HTTPException, route_name="login_page")
@exception_view_config(HTTPException, route_name="logout")
def login_error(exc, request):
    """The forms' errors as the login page (a stale CSRF token, a wrong method), not JSON."""
    if isinstance(exc, BadCSRFOrigin):
        message = "The form was sent from another site; log in from this site's own page."
    elif exc.code == 400:  # BadCSRFToken: the only other 400 these views raise
        message = "The form expired (its CSRF token is missing or wrong); please try again."
    else:
        message = exc.detail if isinstance(exc.detail, str) else exc.title
    response = login_page(request, exc.code, message)
    for name in ("Allow", "Retry-After"):  # 405; 503 when the hashing slots stay full
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response
