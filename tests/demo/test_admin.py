"""The demo's way to the add-on's admin page: the HTML login form and its cookie, the
is_admin flag (migration 0005, the sample teacher), CSRF on every cookie-authenticated form,
and the page on the demo's own mail jobs."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select, text, update
from webtest import TestApp

from demo_app.models import User
from demo_app.sample import TEACHER_EMAIL, TEACHER_PASSWORD
from pyramid_examcache.mail.outbox import outbox_table

from .conftest import close_testapp, make_testapp
from .helpers import bearer, register_verified

ADMIN_SETTINGS = {"examcache.admin_path": "/_examcache/", "examcache.admin_login_url": "/login",
                  # http: the cookies are not Secure, so WebTest sends them back
                  "demo.public_url": "http://localhost"}


@pytest.fixture
def app(settings):
    testapp = make_testapp({**settings, **ADMIN_SETTINGS})
    yield testapp
    close_testapp(testapp)


def browser_login(app: TestApp, email: str = TEACHER_EMAIL, password: str = TEACHER_PASSWORD,
                  next_path: str = "/_examcache/", status=None):
    form = app.get(f"/login?next={next_path}").forms[0]
    form["email"], form["password"] = email, password
    return form.submit(status=status)


def test_the_teacher_logs_in_and_sees_the_admin_page(app):
    first = app.get("/_examcache/?state=failed", status=303)
    assert first.location == "http://localhost/login?next=%2F_examcache%2F%3Fstate%3Dfailed"
    form = first.follow().forms[0]
    assert form["next"].value == "/_examcache/?state=failed"
    form["email"], form["password"] = TEACHER_EMAIL, TEACHER_PASSWORD
    done = form.submit(status=303)
    assert done.location == "http://localhost/_examcache/?state=failed"
    cookie = [c for c in done.headers.getall("Set-Cookie") if c.startswith("demo_auth=")][0]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert "Secure" not in cookie  # demo.public_url is http here
    page = done.follow()
    assert page.status_int == 200 and "Mail jobs" in page.text
    # the cookie carries the API's own signed token
    token = app.cookies["demo_auth"]
    assert app.get("/api/exams/1", headers=bearer(token)).json["viewer"]["email"] == TEACHER_EMAIL


def test_the_cookie_is_secure_on_https(settings):
    app = make_testapp({**settings, **ADMIN_SETTINGS, "demo.public_url": "https://exams.example.com"})
    try:
        page = app.get("/login")
        assert "secure" in page.headers["Set-Cookie"].lower()  # the CSRF cookie
        form = page.forms[0]
        form["email"], form["password"] = TEACHER_EMAIL, TEACHER_PASSWORD
        # WebTest does not send a Secure cookie over http: post the cookie explicitly
        visitor = page.headers["Set-Cookie"].split(";")[0]  # demo_csrf=<signed visitor id>
        done = app.post("/login", {"email": TEACHER_EMAIL, "password": TEACHER_PASSWORD,
                                   "csrf_token": form["csrf_token"].value},
                        headers={"Cookie": visitor}, status=303)
        cookie = [c for c in done.headers.getall("Set-Cookie") if c.startswith("demo_auth=")][0]
        assert "secure;" in cookie.lower() and "HttpOnly" in cookie
    finally:
        close_testapp(app)


def test_a_user_without_the_admin_flag_is_forbidden(app, mail):
    register_verified(app, mail, "student@example.com")
    done = browser_login(app, "student@example.com", "correct horse battery")
    assert done.status_int == 303
    page = app.get("/_examcache/", status=403)
    assert "Your account does not have it." in page.text and page.content_type == "text/html"
    app.get("/_examcache/cache", status=403)


def test_bad_logins(app, mail):
    for email, password, status, message in (
            (TEACHER_EMAIL, "wrong", 401, "Invalid email or password."),
            ("nobody@example.com", "whatever", 401, "Invalid email or password."),
            ("", "", 400, "Enter your email address and password.")):
        page = browser_login(app, email, password, status=status) if email else app.post(
            "/login", {"csrf_token": app.get("/login").forms[0]["csrf_token"].value}, status=400)
        assert page.status_int == status and message in page.text
        assert "demo_auth" not in app.cookies
    app.post_json("/api/auth/register", {"email": "new@example.com", "password": "x" * 10,
                                         "name": "New"}, status=201)
    page = app.post("/login", {"email": "new@example.com", "password": "x" * 10,
                               "csrf_token": app.get("/login").forms[0]["csrf_token"].value},
                    status=403)
    assert "Verify your email address" in page.text


def test_open_redirects_are_refused(app):
    for evil in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:x"):
        form = app.get("/login", {"next": evil}).forms[0]
        assert form["next"].value == "/"


def test_login_and_logout_need_the_csrf_token(app):
    page = app.post("/login", {"email": TEACHER_EMAIL, "password": TEACHER_PASSWORD}, status=400)
    assert "CSRF token" in page.text and page.content_type == "text/html"
    assert "demo_auth" not in app.cookies
    browser_login(app)
    app.get("/_examcache/", status=200)
    app.post("/logout", status=400)  # without the token: still logged in
    app.get("/_examcache/", status=200)
    app.get("/login").forms[0].submit(status=303)  # the page's log-out form
    assert not app.cookies.get("demo_auth")
    app.get("/_examcache/", status=303)


def test_the_cookie_does_not_authenticate_the_json_api(app):
    browser_login(app)
    assert app.get("/api/exams/1").json["viewer"] is None or \
        app.get("/api/exams/1").json["viewer"].get("email") != TEACHER_EMAIL
    app.put_json("/api/exams/1/questions/1", {"text": "through the cookie"}, status=401)


def test_every_unsafe_view_the_cookie_reaches_checks_csrf(app):
    """Outside /api/ the login cookie authenticates: every view there that accepts an
    unsafe method must require Pyramid's CSRF token (a future form cannot forget it)."""
    registry = app.app.registry
    patterns = {r.name: r.pattern for r in app.app.routes_mapper.get_routes()}
    checked = []
    for intr in registry.introspector.get_category("views"):
        view = intr["introspectable"]
        route = view["route_name"]
        if route is None or patterns[route].startswith("/api/") or view["exception_only"] \
                or "method_not_allowed" in view["callable"].__qualname__:  # only raises 405
            continue
        methods = view["request_methods"]
        methods = {methods} if isinstance(methods, str) else set(methods or ("ANY",))
        if methods - {"GET", "HEAD"}:
            assert view["require_csrf"] is True, (route, methods)
            checked.append(route)
    assert {"login_page", "logout", "examcache_admin_job_retry", "examcache_admin_job_cancel",
            "examcache_admin_cache_invalidate"} <= set(checked)


def test_retry_and_cancel_the_demos_mail(app, mail, db):
    browser_login(app)
    job = app.post_json("/api/auth/register", {"email": "ada@example.com", "password": "x" * 10,
                                               "name": "Ada <b>"}, status=201).json["email"]["jobId"]
    with db.begin() as conn:  # as if the SMTP server had refused it
        conn.execute(update(outbox_table).where(outbox_table.c.id == job).values(
            state="failed", failed_reason="550 5.7.1 <refused>"))
    mail.clear()
    listing = app.get("/_examcache/?state=failed")
    assert re.findall(r'data-job="(\w+)"', listing.text) == [job]
    assert "550 5.7.1 &lt;refused&gt;" in listing.text
    detail = app.get(f"/_examcache/jobs/{job}")
    detail.forms["retry"].submit(status=303)
    assert [m.job_id for m in mail.outbox] == [job]  # delivered after the commit
    with db.connect() as conn:
        assert conn.scalar(select(outbox_table.c.state).where(outbox_table.c.id == job)) \
            == "completed"
    # cancel: a waiting row (not pushed) becomes failed with the admin's reason
    with db.begin() as conn:
        conn.execute(update(outbox_table).where(outbox_table.c.id == job).values(state="waiting"))
    app.get(f"/_examcache/jobs/{job}").forms["cancel"].submit(status=303)
    with db.connect() as conn:
        row = conn.execute(select(outbox_table).where(outbox_table.c.id == job)).first()
    assert (row.state, row.failed_reason) == ("failed", "cancelled by admin")


def test_bad_input_is_an_html_400_in_the_demo_too(app):
    browser_login(app)
    for query in ("state=nope", "page=0", "size=100000", "q=%ff"):
        page = app.get(f"/_examcache/?{query}", status=400)
        assert page.content_type == "text/html" and "<h1>400 Bad request</h1>" in page.text


def test_the_teacher_is_an_admin_and_the_migration_adds_the_flag(db):
    with db.connect() as conn:
        assert conn.scalar(select(User.is_admin).where(User.email == TEACHER_EMAIL)) is True
        conn.execute(text("INSERT INTO users (email, name, password_hash, verified, created_at) "
                          "VALUES ('x@example.com', 'X', 'h', true, now())"))
        # the column's server default: a user created without it is no admin
        assert conn.scalar(select(User.is_admin).where(User.email == "x@example.com")) is False
        conn.rollback()
