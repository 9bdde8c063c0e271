"""Passwords (argon2), login tokens (HMAC-signed, expiring) and the security policy:
a bearer token in ``Authorization`` (the JSON API), or the same token in the HttpOnly
``demo_auth`` cookie set by the HTML login form (``/login``), honoured outside ``/api/``
only: the JSON API stays bearer-only, so a browser's cookie never authenticates an API
call, and the pages that accept the cookie check Pyramid's CSRF token on every POST
(``require_csrf=True``; ``tests/demo/test_admin.py`` holds every such view to it).

A login token is ``<user id>.<expiry, unix seconds>.<signature>`` where the
signature is HMAC-SHA256 over ``login:<user id>.<expiry>`` with ``demo.secret``
(base64url, unpadded).  Nothing is stored server side; a token stops working
when it expires or when ``demo.secret`` changes.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pyramid.security import Allowed, Denied
from webob.cookies import make_cookie

from .models import User
from .settings import DemoSettings

_MAX_TOKEN_LENGTH = 200
_NO_IDENTITY = object()


# -- passwords -------------------------------------------------------------------

def make_password_hasher(settings: DemoSettings) -> PasswordHasher:
    return PasswordHasher(time_cost=settings.argon2_time_cost,
                          memory_cost=settings.argon2_memory_cost,
                          parallelism=settings.argon2_parallelism)


def hash_password(hasher: PasswordHasher, password: str) -> str:
    return hasher.hash(password)


def check_password(hasher: PasswordHasher, password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; with no hash, spend the same time and answer False."""
    if password_hash is None:
        password_hash = _dummy_hash(hasher)
        password = password + "\x00not-it"
    try:
        return hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_dummy_hashes: dict[tuple, str] = {}


def _dummy_hash(hasher: PasswordHasher) -> str:
    key = (hasher.time_cost, hasher.memory_cost, hasher.parallelism)
    if key not in _dummy_hashes:
        _dummy_hashes[key] = hasher.hash(secrets.token_hex(16))
    return _dummy_hashes[key]


# -- verification tokens ---------------------------------------------------------

def new_verification_token() -> tuple[str, str]:
    """A fresh token to mail and the hash to store (only the hash is kept)."""
    token = secrets.token_urlsafe(32)
    return token, hash_verification_token(token)


def hash_verification_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# -- login tokens ----------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _sign(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), f"login:{payload}".encode(), hashlib.sha256).digest())


def make_login_token(secret: str, user_id: int, ttl: int, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl)
    payload = f"{user_id}.{expires}"
    return f"{payload}.{_sign(secret, payload)}"


def read_login_token(secret: str, token: str, now: float | None = None) -> int | None:
    """The user id of a valid, unexpired token, else None -- never an exception,
    whatever the bytes (a header arrives as latin-1 text, so any octet may be there)."""
    if not token or len(token) > _MAX_TOKEN_LENGTH or not token.isascii():
        return None
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    user_id, expires, signature = parts
    # compare bytes: compare_digest refuses str holding non-ASCII characters
    if not hmac.compare_digest(_sign(secret, f"{user_id}.{expires}").encode("ascii"),
                               signature.encode("ascii")):
        return None
    if int(expires) < (time.time() if now is None else now):
        return None
    return int(user_id)


#: the cookie of the HTML login (HttpOnly, SameSite=Lax; Secure when demo.public_url is https)
AUTH_COOKIE = "demo_auth"


def cookie_applies(request) -> bool:
    """The login cookie authenticates the HTML pages, never the JSON API under ``/api/``."""
    path = request.environ.get("PATH_INFO", "")  # raw: request.path_info may not decode
    return not (path == "/api" or path.startswith("/api/"))


def bearer_token(request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


class BearerTokenSecurityPolicy:
    """``Authorization: Bearer <token>`` (or, outside ``/api/``, the ``demo_auth`` cookie)
    -> the verified :class:`User`, or None.

    Permissions: only ``admin_permission`` (the add-on's ``examcache.admin_permission``,
    the admin page) exists, granted to users whose ``is_admin`` is set.
    """

    def __init__(self, secret: str, admin_permission: str | None = None, *,
                 token_ttl: int = 3600, secure_cookie: bool = False) -> None:
        self.secret = secret
        self.admin_permission = admin_permission
        self.token_ttl = token_ttl
        self.secure_cookie = secure_cookie

    def identity(self, request) -> User | None:
        cached = request.environ.get("demo.identity", _NO_IDENTITY)
        if cached is not _NO_IDENTITY:
            return cached
        user = None
        token = bearer_token(request)
        if token is None and cookie_applies(request):
            token = request.cookies.get(AUTH_COOKIE) or None
        user_id = read_login_token(self.secret, token) if token else None
        if user_id is not None and user_id < 2**31:
            user = request.dbsession.get(User, user_id)
            if user is not None and not user.verified:
                user = None
        request.environ["demo.identity"] = user
        return user

    def authenticated_userid(self, request) -> int | None:
        user = self.identity(request)
        return None if user is None else user.id

    def permits(self, request, context, permission):
        # views check exam ownership themselves; the one permission is the admin page's
        if not permission:
            return Allowed("no permission")
        if self.admin_permission and permission == self.admin_permission:
            user = self.identity(request)
            if user is not None and user.is_admin:
                return Allowed("an admin")
            return Denied("admins only")
        return Denied(f"no such permission: {permission}")

    def remember(self, request, userid, **kw):
        """The ``Set-Cookie`` header of the HTML login: a login token for ``userid`` (the
        same signed token the API's login answers), HttpOnly, SameSite=Lax, for
        ``demo.token_ttl`` seconds."""
        token = make_login_token(self.secret, int(userid), self.token_ttl)
        return [("Set-Cookie", self._cookie(token, self.token_ttl))]

    def forget(self, request, **kw):
        return [("Set-Cookie", self._cookie("", 0))]

    def _cookie(self, value: str, max_age: int) -> str:
        return make_cookie(AUTH_COOKIE, value, max_age=max_age, path="/", httponly=True,
                           secure=self.secure_cookie, samesite="lax")
