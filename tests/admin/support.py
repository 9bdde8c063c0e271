"""A small application with the admin page: header-based identities, the outbox on SQLite or
PostgreSQL, the memory:// cache, mail in-process (``pyramid_examcache.testing``)."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pyramid.csrf import CookieCSRFStoragePolicy
from pyramid.security import Allowed, Denied
from sqlalchemy import select, update
from webtest import TestApp

from pyramid_examcache.mail.outbox import new_row, outbox_table

from ..mail.support import make_app

ADMIN = {"X-Test-User": "admin"}
USER = {"X-Test-User": "someone"}


class HeaderPolicy:
    """``X-Test-User`` is the identity; ``admin`` holds ``permission``, nobody else does."""

    def __init__(self, permission: str = "examcache.admin") -> None:
        self.permission = permission

    def identity(self, request):
        return request.headers.get("X-Test-User") or None

    def authenticated_userid(self, request):
        return self.identity(request)

    def permits(self, request, context, permission):
        if not permission:
            return Allowed("public")
        if permission == self.permission and self.identity(request) == "admin":
            return Allowed("admin")
        return Denied("no")

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


def admin_app(db_url: str, engine=None, csrf: bool = True, **settings: Any) -> TestApp:
    def extra(config):
        config.include("pyramid_examcache.testing")
        config.set_security_policy(HeaderPolicy(settings.get("examcache.admin_permission",
                                                             "examcache.admin")))
        if csrf:
            config.set_csrf_storage_policy(CookieCSRFStoragePolicy(httponly=True))

    all_settings = {"examcache.redis_url": "memory://", "examcache.admin_path": "/_examcache/",
                    "mail.default_sender": "no-reply@example.com", **settings}
    return TestApp(make_app(db_url, all_settings, engine=engine, include="pyramid_examcache",
                            extra=extra))


def add_job(engine, subject: str = "Hello", to: Any = ("a@example.com",), state: str = "waiting",
            created: dt.datetime | None = None, **values: Any) -> str:
    """An outbox row written directly (no push): ``state`` and any column in ``values``."""
    job_id = uuid.uuid4().hex
    now = created or dt.datetime.now(dt.timezone.utc)
    row = new_row(job_id, f"<{job_id}@example.com>", "no-reply@example.com",
                  {"to": list(to), "cc": [], "bcc": []}, subject, "<p>hi</p>", "hi", {}, now)
    row.update(state=state, **values)
    with engine.begin() as conn:
        conn.execute(outbox_table.insert().values(**row))
    return job_id


def job_row(engine, job_id: str):
    with engine.connect() as conn:
        return conn.execute(select(outbox_table).where(outbox_table.c.id == job_id)).first()


def set_state(engine, job_id: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(update(outbox_table).where(outbox_table.c.id == job_id).values(**values))


def csrf_of(page) -> str:
    """The CSRF token of the first form of a page (WebTest)."""
    return next(iter(page.forms.values()))["csrf_token"].value
