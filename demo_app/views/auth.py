"""``/api/auth/*``: register (queues the verification mail), verify, login,
resend-verification.

Links in mails start with ``demo.public_url``, never with the request's Host
header (which the client chooses).  Login and re-sends are rate limited
(:mod:`demo_app.throttle`).
"""
from __future__ import annotations

import datetime as dt
import html
import logging
import time
from urllib.parse import urlencode

from pyramid.httpexceptions import (HTTPConflict, HTTPForbidden, HTTPGone, HTTPTooManyRequests,
                                    HTTPUnauthorized)
from pyramid.renderers import render
from pyramid.view import view_config
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..models import User
from ..security import (check_password, hash_password, hash_verification_token,
                        make_login_token, new_verification_token)
from ..settings import get_demo_settings
from ..throttle import get_throttle
from ..validation import NAME_MAX, PASSWORD_MAX, PASSWORD_MIN, Fields, ValidationFailed, json_object

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


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
    return request.mailer.send_queued(
        to=[user.email], **verification_mail(request, user, verification_url(request, token),
                                             settings.verify_ttl / 3600))


@view_config(route_name="register", request_method="POST", renderer="json")
def register(request):
    fields = Fields(json_object(request), allowed=("email", "password", "name"))
    email = fields.email()
    password = fields.string("password", min_length=PASSWORD_MIN, max_length=PASSWORD_MAX,
                             strip=False)
    name = fields.string("name", max_length=NAME_MAX)
    fields.done("invalid registration")

    session = request.dbsession
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise HTTPConflict("an account with this email address already exists")
    settings = get_demo_settings(request)
    token, token_hash = new_verification_token()
    user = User(email=email, name=name, verified=False,
                password_hash=hash_password(request.registry["demo.password_hasher"], password),
                verify_token_hash=token_hash,
                verify_expires_at=utcnow() + dt.timedelta(seconds=settings.verify_ttl))
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # a concurrent registration won the race; the transaction aborts
        raise HTTPConflict("an account with this email address already exists") from None

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
        raise ValidationFailed("invalid verification request", {"token": "this parameter is required"})
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
    throttle_login(request, email)

    hasher = request.registry["demo.password_hasher"]
    user = request.dbsession.scalar(select(User).where(User.email == email))
    if not check_password(hasher, user.password_hash if user else None, password):
        raise HTTPUnauthorized("invalid email or password", headers={"WWW-Authenticate": "Bearer"})
    if not user.verified:
        raise HTTPForbidden("verify your email address before logging in")
    if hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(hasher, password)
    settings = get_demo_settings(request)
    token = make_login_token(settings.secret, user.id, settings.token_ttl, now=time.time())
    return {"token": token, "tokenType": "Bearer", "expiresIn": settings.token_ttl,
            "user": user.to_json()}


def throttle_login(request, email: str) -> None:
    """429 once the address or the client IP made more than ``demo.login_limit``
    attempts in the current ``demo.login_window`` (both are counted, every time).

    The client IP is ``REMOTE_ADDR`` -- never X-Forwarded-For, which the client
    writes; behind a proxy let the server set REMOTE_ADDR (waitress:
    ``trusted_proxy``)."""
    settings = get_demo_settings(request)
    throttle = get_throttle(request)
    limit, window = settings.login_limit, settings.login_window
    waits = [throttle.hit("login:ip", request.remote_addr or "unknown", limit, window),
             throttle.hit("login:email", email, limit, window)]
    waits = [w for w in waits if w is not None]
    if waits:
        raise HTTPTooManyRequests("too many login attempts; try again later",
                                  headers={"Retry-After": str(max(waits))})


RESEND_ANSWER = {"message": "if an account with this address awaits verification, "
                            "a new verification mail is on its way"}


@view_config(route_name="resend_verification", request_method="POST", renderer="json")
def resend_verification(request):
    """Always ``202`` with the same body (no account enumeration).  At most one mail
    per address per ``demo.resend_interval``; a mail carries a fresh token and the
    previous link stops working (only the newest token's hash is stored)."""
    fields = Fields(json_object(request), allowed=("email",))
    email = fields.email()
    fields.done("invalid request")

    settings = get_demo_settings(request)
    request.response.status_code = 202
    if not get_throttle(request).claim("resend", email, settings.resend_interval):
        return RESEND_ANSWER
    user = request.dbsession.scalar(select(User).where(User.email == email))
    if user is not None and not user.verified:
        token, token_hash = new_verification_token()
        user.verify_token_hash = token_hash
        user.verify_expires_at = utcnow() + dt.timedelta(seconds=settings.verify_ttl)
        try:
            queue_verification_mail(request, user, token)
        except ValueError as exc:  # answering differently would tell the account exists
            log.warning("resend-verification: the mailer refused the address (%s)", exc)
            request.tm.doom()  # keep the old token: nothing was sent
    return RESEND_ANSWER


def _short(exc: BaseException) -> str:
    text = str(exc) or "the mailer refused this address"
    return text if len(text) <= 200 else text[:200] + "…"
