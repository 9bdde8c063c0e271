"""``/api/auth/*``: register (queues the verification mail), verify, login,
resend-verification.

Links in mails start with ``demo.public_url``, never with the request's Host
header (which the client chooses).  Sign-ups (registrations and re-sends) are
throttled per client address and per target address, plus a daily cap per target
address; logins per client address, and wrong passwords per address + client with a
growing wait (:mod:`demo_app.throttle`).  Beyond a limit: 429 + ``Retry-After`` and a
JSON body naming it.  Password hashing runs in ``demo.hash_slots`` slots (503 +
``Retry-After`` when they stay full).

A registration's password becomes usable only through its own verification link:
registering an address again while it is unverified replaces the pending password,
name and link (the older link stops working), so whoever controls the mailbox decides.
"""
from __future__ import annotations

import datetime as dt
import logging
from urllib.parse import urlencode

from pyramid.httpexceptions import (
    HTTPConflict,
    HTTPForbidden,
    HTTPGone,
    HTTPTooManyRequests,
    HTTPUnauthorized,
)
from pyramid.renderers import render
from pyramid.view import exception_view_config, view_config
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from pyramid_examcache.clock import as_utc, utcnow

from ..models import User
from ..security import (
    bounded_check,
    bounded_hash,
    hash_verification_token,
    login_token_for,
    new_verification_token,
)
from ..settings import get_demo_settings
from ..throttle import get_throttle
from ..validation import NAME_MAX, PASSWORD_MAX, PASSWORD_MIN, Fields, ValidationFailed, json_object
from .errors import json_error

log = logging.getLogger(__name__)


def verification_mail(request, user: User, link: str, hours: float) -> dict[str, str]:
    """Subject and both parts, from ``templates/mail/verify.{html,txt}.jinja2``."""
    values = {"name": user.name, "link": link,
              "valid": f"{hours:g} hour{'s' if hours != 1 else ''}"}
    return {
        "subject": "Verify your email address",
        "html": render("demo_app:templates/mail/verify.html.jinja2", values, request=request),
        "text": render("demo_app:templates/mail/verify.txt.jinja2", values, request=request),
    }


def verification_url(request, token: str) -> str:
    """The link mailed to the user: ``demo.public_url`` + the verify route."""
    base = get_demo_settings(request).public_url
    return f"{base}/api/auth/verify?{urlencode({'token': token})}"


def queue_verification_mail(request, user: User, token: str):
    settings = get_demo_settings(request)
    return request.mailer.send_queued(  # a user waits for it: ahead of any bulk mail
        to=[user.email], priority="high",
        **verification_mail(request, user, verification_url(request, token),
                            settings.verify_ttl / 3600))


def queue_no_pending_mail(request, email: str):
    """A re-send for an address with no account awaiting verification: a fixed text
    (nothing the requester wrote), so a re-send costs the same whether one exists."""
    values = {"login": f"{get_demo_settings(request).public_url}/login"}
    return request.mailer.send_queued(
        to=[email], subject="Verification link requested", priority="high",
        html=render("demo_app:templates/mail/no_pending.html.jinja2", values, request=request),
        text=render("demo_app:templates/mail/no_pending.txt.jinja2", values, request=request))


# -- throttles -------------------------------------------------------------------

class Throttled(HTTPTooManyRequests):
    """429 with ``Retry-After``; the JSON body names the limit that was reached."""

    def __init__(self, name: str, retry_after: int, message: str, limit: int,
                 window: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        # (not .retry_after: a webob Response property, the header as a datetime)
        self.throttle_limit = {"name": name, "max": limit, "window": window}
        self.wait_seconds = retry_after


@exception_view_config(Throttled)
def throttled_view(exc, request):
    return json_error(exc, limit=exc.throttle_limit, retryAfter=exc.wait_seconds)


def client_address(request) -> str:
    """``REMOTE_ADDR`` -- never X-Forwarded-For, which the client writes; behind a proxy
    let the server set REMOTE_ADDR (waitress: ``trusted_proxy``)."""
    return request.remote_addr or "unknown"


DAY = 86400


def throttle_signup_client(request) -> None:
    """Registrations + re-sends per client address (``demo.signup_limit``)."""
    settings = get_demo_settings(request)
    limit, window = settings.signup_limit, settings.signup_window
    wait = get_throttle(request).hit("signup:client", client_address(request), limit, window)
    if wait is not None:
        raise Throttled("signup:client", wait, "too many sign-up requests from this client; "
                        "try again later", limit, window)


def throttle_signup_address(request, email: str) -> None:
    """Mails to one address: ``demo.signup_address_limit`` per window, and
    ``demo.signup_daily_limit`` per day -- the same for known and unknown addresses."""
    settings = get_demo_settings(request)
    throttle = get_throttle(request)
    limit, window = settings.signup_address_limit, settings.signup_window
    wait = throttle.hit("signup:address", email, limit, window)
    if wait is not None:
        raise Throttled("signup:address", wait, "too many sign-up requests for this email "
                        "address; try again later", limit, window)
    wait = throttle.hit("signup:daily", email, settings.signup_daily_limit, DAY)
    if wait is not None:
        raise Throttled("signup:daily", wait, "the daily limit of sign-up mails to this email "
                        "address is reached; try again tomorrow", settings.signup_daily_limit,
                        DAY)


@view_config(route_name="register", request_method="POST", renderer="json")
def register(request):
    fields = Fields(json_object(request), allowed=("email", "password", "name"))
    email = fields.email()
    password = fields.string("password", min_length=PASSWORD_MIN, max_length=PASSWORD_MAX,
                             strip=False)
    name = fields.string("name", max_length=NAME_MAX)
    fields.done("invalid registration")
    throttle_signup_client(request)
    throttle_signup_address(request, email)
    # before the database: a busy server answers 503 without holding a connection
    password_hash = bounded_hash(request, password)

    session = request.dbsession
    user = session.scalar(select(User).where(User.email == email))
    if user is not None and user.verified:
        raise HTTPConflict("an account with this email address already exists")
    settings = get_demo_settings(request)
    token, token_hash = new_verification_token()
    expires = utcnow() + dt.timedelta(seconds=settings.verify_ttl)
    if user is None:
        user = User(email=email, name=name, verified=False, password_hash=password_hash,
                    verify_token_hash=token_hash, verify_expires_at=expires)
        session.add(user)
        try:
            session.flush()
        except IntegrityError:  # a concurrent registration won the race; the transaction aborts
            raise HTTPConflict("an account with this email address already exists") from None
    else:
        # unverified: whoever registered it never opened its link. This registration's
        # password, name and link replace theirs (their link stops working).
        user.set_password(password_hash)
        user.name = name
        user.verify_token_hash = token_hash
        user.verify_expires_at = expires

    try:
        job = queue_verification_mail(request, user, token)
    except ValueError as exc:  # the mailer refuses the address (e.g. non-ASCII without SMTPUTF8)
        raise ValidationFailed("invalid registration", {"email": _short(exc)}) from None
    request.response.status_code = 201
    return {"user": user.to_json(), "email": {"queued": True, "jobId": job.id}}


@view_config(route_name="verify", request_method="GET", renderer="json")
def verify(request):
    """GET verifies (single use).  HEAD -- which Pyramid routes here too, and which
    link scanners and previews send -- answers the same status but changes nothing."""
    token = request.GET.get("token", "")
    if not token.strip():
        raise ValidationFailed("invalid verification request",
                               {"token": "this parameter is required"})
    if len(token) > 200:
        raise ValidationFailed("invalid or already used verification link")
    user = request.dbsession.scalar(
        select(User).where(User.verify_token_hash == hash_verification_token(token)))
    if user is None:
        raise ValidationFailed("invalid or already used verification link")
    if user.verify_expires_at is None or as_utc(user.verify_expires_at) < utcnow():
        raise HTTPGone("this verification link has expired")
    if request.method != "GET":  # HEAD: safe, the link stays usable
        return {"message": "valid verification link"}
    user.verified = True
    user.verify_token_hash = None  # single use
    user.verify_expires_at = None
    return {"message": "email address verified", "user": user.to_json()}


@view_config(route_name="login", request_method="POST", renderer="json")
def login(request):
    fields = Fields(json_object(request), allowed=("email", "password"))
    email = fields.email()
    password = fields.string("password", min_length=1, max_length=PASSWORD_MAX, strip=False)
    fields.done("invalid login")
    user = authenticate(request, email, password)
    if user is None:
        raise HTTPUnauthorized("invalid email or password", headers={"WWW-Authenticate": "Bearer"})
    if not user.verified:
        raise HTTPForbidden("verify your email address before logging in")
    settings = get_demo_settings(request)
    return {"token": login_token_for(request, user), "tokenType": "Bearer",
            "expiresIn": settings.token_ttl, "user": user.to_json()}


def authenticate(request, email: str, password: str) -> User | None:
    """The user whose password this is (verified or not), else None; throttled
    (:func:`throttle_login`: :class:`Throttled`), hashing in a slot (503 when full)."""
    throttle_login(request, email)
    hasher = request.registry["demo.password_hasher"]
    user = request.dbsession.scalar(select(User).where(User.email == email))
    if not bounded_check(request, user.password_hash if user else None, password):
        login_failed(request, email)
        return None
    get_throttle(request).forgive("login:pair", _pair(request, email))
    if hasher.check_needs_rehash(user.password_hash):  # the same password: tokens stay valid
        user.password_hash = bounded_hash(request, password)
    return user


def _pair(request, email: str) -> str:
    return f"{email}\n{client_address(request)}"


def throttle_login(request, email: str) -> None:
    """:class:`Throttled` once the client made more than ``demo.login_limit`` attempts
    in the current ``demo.login_window``, or while this address + client must wait
    after wrong passwords (:func:`login_failed`).  Nothing is keyed on the address
    alone: others cannot lock its owner out."""
    settings = get_demo_settings(request)
    throttle = get_throttle(request)
    limit, window = settings.login_limit, settings.login_window
    wait = throttle.hit("login:ip", client_address(request), limit, window)
    if wait is not None:
        raise Throttled("login:client", wait, "too many login attempts from this client; "
                        "try again later", limit, window)
    wait = throttle.wait("login:pair", _pair(request, email))
    if wait is not None:
        raise Throttled("login:address+client", wait, "too many wrong passwords for this "
                        "address; try again later", settings.login_free_failures,
                        settings.login_backoff_max)


def login_failed(request, email: str) -> None:
    """A wrong password: past ``demo.login_free_failures`` for this address + client,
    a wait of 1, 2, 4 ... seconds (at most ``demo.login_backoff_max``)."""
    settings = get_demo_settings(request)
    get_throttle(request).fail("login:pair", _pair(request, email),
                               settings.login_free_failures, settings.login_backoff_max)


RESEND_ANSWER = {"message": "if an account with this address awaits verification, "
                            "a new verification mail is on its way"}


@view_config(route_name="resend_verification", request_method="POST", renderer="json")
def resend_verification(request):
    """Always ``202`` with the same body (no account enumeration), after the same work:
    one UPDATE and one queued mail whether an account awaits verification (a fresh
    link; the previous one stops working) or not (:func:`queue_no_pending_mail`).  At
    most one mail per address per ``demo.resend_interval`` (later requests: the same
    202, nothing sent); the sign-up throttles apply (429)."""
    fields = Fields(json_object(request), allowed=("email",))
    email = fields.email()
    fields.done("invalid request")
    throttle_signup_client(request)

    settings = get_demo_settings(request)
    request.response.status_code = 202
    if not get_throttle(request).claim("resend", email, settings.resend_interval):
        return RESEND_ANSWER
    throttle_signup_address(request, email)
    token, token_hash = new_verification_token()
    pending = request.dbsession.execute(
        update(User).where(User.email == email, User.verified.is_(False))
        .values(verify_token_hash=token_hash,
                verify_expires_at=utcnow() + dt.timedelta(seconds=settings.verify_ttl))
        .returning(User.id, User.name)).first()
    try:
        if pending is not None:
            queue_verification_mail(request, User(email=email, name=pending.name), token)
        else:
            queue_no_pending_mail(request, email)
    except ValueError as exc:  # answering differently would tell the account exists
        log.warning("resend-verification: the mailer refused the address (%s)", exc)
        request.tm.doom()  # keep the old token: nothing was sent
    return RESEND_ANSWER


def _short(exc: BaseException) -> str:
    text = str(exc) or "the mailer refused this address"
    return text if len(text) <= 200 else text[:200] + "…"
