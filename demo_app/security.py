"""Passwords (argon2, in a bounded number of slots), login tokens (HMAC-signed,
expiring, revocable) and the security policy: a bearer token in ``Authorization``
(the JSON API), or the same token in the HttpOnly ``demo_auth`` cookie set by the HTML
login form (``/login``), honoured outside ``/api/`` only: the JSON API stays
bearer-only, and the pages that accept the cookie check a CSRF token on every POST
(``require_csrf=True``; ``tests/demo/test_admin.py`` holds every such view to it).

A login token is ``<user id>.<generation>.<issued>.<expiry>.<signature>`` (unix
seconds) signed with HMAC-SHA256 over ``login:<the rest>`` with ``demo.secret``.  It
works while its generation equals the user's ``token_generation`` (bumped at logout
and at a password change), and until its expiry or ``demo.token_ttl`` after its issue
time, whichever comes first (an issue time in the future is refused).

CSRF (:class:`SignedCSRFStoragePolicy`): the ``demo_csrf`` cookie holds a random visitor
id signed with ``demo.secret``; the form token is an HMAC over that id and the login
(user id + token generation, or "anonymous"), so only tokens this server issued, for
this visitor and this login, pass -- a planted cookie + matching field is refused.
Every check also compares ``Origin`` (or ``Referer`` when there is no Origin) with
``demo.public_url``'s origin, whatever the scheme; a request with neither (not a
browser) relies on the token alone.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pyramid.exceptions import BadCSRFOrigin
from pyramid.httpexceptions import HTTPServiceUnavailable
from pyramid.interfaces import ICSRFStoragePolicy
from pyramid.security import Allowed, Denied
from webob.cookies import make_cookie
from zope.interface import implementer

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


class HashSlots:
    """At most ``slots`` argon2 computations at once (``demo.hash_slots``), and at most
    as many requests queued for one, each for ``wait`` seconds at most
    (``demo.hash_wait``); any other request gets 503 + ``Retry-After`` at once -- so a
    burst of sign-ups or logins holds a few threads and cores, never all of them."""

    def __init__(self, slots: int, wait: float, retry_after: int = 1) -> None:
        self.slots = slots
        self.wait = wait
        self.retry_after = retry_after
        self._semaphore = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._waiting = 0

    def _acquire(self) -> bool:
        if self._semaphore.acquire(blocking=False):
            return True
        with self._lock:
            if self._waiting >= self.slots or not self.wait:
                return False
            self._waiting += 1
        try:
            return self._semaphore.acquire(timeout=self.wait)
        finally:
            with self._lock:
                self._waiting -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._acquire():
            raise HTTPServiceUnavailable(
                "the server is busy checking passwords; try again in a moment",
                headers={"Retry-After": str(self.retry_after)})
        try:
            yield
        finally:
            self._semaphore.release()


def hash_slots(request) -> HashSlots:
    return request.registry["demo.hash_slots"]


def bounded_hash(request, password: str) -> str:
    """:func:`hash_password` in one of the request's hashing slots."""
    with hash_slots(request).slot():
        return hash_password(request.registry["demo.password_hasher"], password)


def bounded_check(request, password_hash: str | None, password: str) -> bool:
    """:func:`check_password` in one of the request's hashing slots."""
    with hash_slots(request).slot():
        return check_password(request.registry["demo.password_hasher"], password_hash,
                              password)


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


#: seconds an issue time may lie ahead of this server's clock (several processes)
CLOCK_SKEW = 60


class LoginToken(NamedTuple):
    user_id: int
    generation: int
    issued: int
    expires: int


def make_login_token(secret: str, user_id: int, ttl: int, now: float | None = None,
                     generation: int = 0) -> str:
    issued = int(time.time() if now is None else now)
    payload = f"{user_id}.{generation}.{issued}.{issued + ttl}"
    return f"{payload}.{_sign(secret, payload)}"


def read_login_token(secret: str, token: str, max_ttl: int, now: float | None = None
                     ) -> LoginToken | None:
    """The fields of a valid token, unexpired and younger than ``max_ttl`` seconds
    (``demo.token_ttl``, whatever expiry it names), else None -- never an exception,
    whatever the bytes (a header arrives as latin-1 text, so any octet may be there).
    The caller compares the generation with the user's."""
    if not token or len(token) > _MAX_TOKEN_LENGTH or not token.isascii():
        return None
    parts = token.split(".")
    if len(parts) != 5 or not all(p.isdigit() and len(p) <= 12 for p in parts[:4]):
        return None
    *fields, signature = parts
    # compare bytes: compare_digest refuses str holding non-ASCII characters
    if not hmac.compare_digest(_sign(secret, ".".join(fields)).encode("ascii"),
                               signature.encode("ascii")):
        return None
    user_id, generation, issued, expires = (int(f) for f in fields)
    now = time.time() if now is None else now
    if issued > now + CLOCK_SKEW or now >= min(expires, issued + max_ttl):
        return None
    return LoginToken(user_id, generation, issued, expires)


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
        login = read_login_token(self.secret, token, self.token_ttl) if token else None
        if login is not None and login.user_id < 2**31:
            user = request.dbsession.get(User, login.user_id)
            if user is not None and (not user.verified
                                     or user.token_generation != login.generation):
                user = None  # unverified, or the token was revoked (logout, new password)
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
        user = request.dbsession.get(User, int(userid))
        token = make_login_token(self.secret, int(userid), self.token_ttl,
                                 generation=user.token_generation if user else 0)
        return [("Set-Cookie", self._cookie(token, self.token_ttl))]

    def forget(self, request, **kw):
        return [("Set-Cookie", self._cookie("", 0))]

    def _cookie(self, value: str, max_age: int) -> str:
        return make_cookie(AUTH_COOKIE, value, max_age=max_age, path="/", httponly=True,
                           secure=self.secure_cookie, samesite="lax")


def login_token_for(request, user: User) -> str:
    """A new login token for ``user`` (the API's login), valid ``demo.token_ttl``."""
    from .settings import get_demo_settings

    settings = get_demo_settings(request)
    return make_login_token(settings.secret, user.id, settings.token_ttl,
                            generation=user.token_generation or 0)


# -- CSRF ------------------------------------------------------------------------

#: the CSRF cookie: a visitor id signed with demo.secret (HttpOnly, SameSite=Lax)
CSRF_COOKIE = "demo_csrf"


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL (default ports dropped), or None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    default = 443 if scheme == "https" else 80
    host = parts.hostname.lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


@implementer(ICSRFStoragePolicy)
class SignedCSRFStoragePolicy:
    """CSRF tokens the server issued, bound to the visitor and the login (see the module
    docstring), plus an ``Origin``/``Referer`` check against ``public_url``."""

    def __init__(self, secret: str, public_url: str, *, secure: bool = False) -> None:
        self.secret = secret
        self.origin = origin_of(public_url)
        self.secure = secure

    def _mac(self, purpose: str, value: str) -> str:
        digest = hmac.new(self.secret.encode(), f"{purpose}:{value}".encode(), hashlib.sha256)
        return _b64(digest.digest())

    def _visitor(self, request) -> str | None:
        """The visitor id of this request: a new one, or the cookie's if its signature holds."""
        visitor = request.environ.get("demo.csrf_visitor")
        if visitor:
            return visitor
        raw = request.cookies.get(CSRF_COOKIE, "")
        visitor, _, signature = raw.partition(".")
        if (visitor and len(raw) <= 100 and raw.isascii() and hmac.compare_digest(
                self._mac("csrf-visitor", visitor).encode("ascii"), signature.encode("ascii"))):
            return visitor
        return None

    @staticmethod
    def _login(request) -> str:
        user = request.identity
        return "anonymous" if user is None else f"user:{user.id}.{user.token_generation}"

    def _token(self, visitor: str, request) -> str:
        return self._mac("csrf", f"{visitor}:{self._login(request)}")

    def new_csrf_token(self, request) -> str:
        visitor = secrets.token_urlsafe(18)
        request.environ["demo.csrf_visitor"] = visitor
        value = f"{visitor}.{self._mac('csrf-visitor', visitor)}"

        def set_cookie(request, response) -> None:
            response.headers.add("Set-Cookie", make_cookie(
                CSRF_COOKIE, value, path="/", httponly=True, secure=self.secure,
                samesite="lax"))

        request.add_response_callback(set_cookie)
        return self._token(visitor, request)

    def get_csrf_token(self, request) -> str:
        visitor = self._visitor(request)
        if visitor is None:
            return self.new_csrf_token(request)
        return self._token(visitor, request)

    def check_csrf_token(self, request, supplied_token: str) -> bool:
        self.check_origin(request)
        visitor = self._visitor(request)
        if visitor is None or not supplied_token or not supplied_token.isascii():
            return False
        return hmac.compare_digest(self._token(visitor, request).encode("ascii"),
                                   supplied_token.encode("ascii"))

    def check_origin(self, request) -> None:
        """:class:`BadCSRFOrigin` unless ``Origin`` (else ``Referer``) is ``public_url``'s
        origin; neither header (not a browser): allowed, the token still decides."""
        origin = request.headers.get("Origin")
        if origin is None:
            referer = request.headers.get("Referer")
            if referer is None:
                return
            origin, what = origin_of(referer), "Referer"
        else:
            origin, what = origin_of(origin) if origin != "null" else None, "Origin"
        if origin is None or origin != self.origin:
            raise BadCSRFOrigin(f"{what} does not match this site ({self.origin}); "
                                "forms must be sent from its own pages")
