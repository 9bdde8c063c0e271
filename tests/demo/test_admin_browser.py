"""The admin page in a real browser: Playwright driving Debian's chromium (/usr/bin/chromium,
installed by .ci/run; never `playwright install`) against the demo served by waitress over
real HTTP, on PostgreSQL, with the mail queue on a private Redis, a real examcache-consumer
and the aiosmtpd sink.

The teacher logs in through the HTML form, filters the failed jobs, retries the one the sink
refused and sees it delivered; a POST without the CSRF token is refused and changes nothing;
a user without the admin flag is forbidden. The run regenerates docs/_static/admin.png and
landing.png when the page's structure changed (or with EXAMCACHE_SCREENSHOTS=1: screenshots.py).
"""
from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, update
from webtest.http import StopableWSGIServer

import demo_app
from demo_app.models import User
from demo_app.sample import TEACHER_EMAIL, TEACHER_PASSWORD
from pyramid_examcache.cache import get_policy
from pyramid_examcache.mail import get_mail_queue
from pyramid_examcache.mail.outbox import outbox_table

from ..conftest import free_port
from ..mail.support import ConsumerProcess, SMTPServer, wait_until, write_ini
from .conftest import base_settings
from .screenshots import save_screenshot

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "_static" / "admin.png"
LANDING_SCREENSHOT = ROOT / "docs" / "_static" / "landing.png"
REFUSED = "550 5.1.1 <ada@example.com>: mailbox unavailable"


@pytest.fixture
def smtp_sink():
    server = SMTPServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def demo_system(db, private_redis, smtp_sink, tmp_path):
    """The demo under waitress + a real consumer, both on the test's PostgreSQL database."""
    port = free_port()
    settings = base_settings(db.url.render_as_string(hide_password=False), **{
        "examcache.redis_url": "memory://",
        "examcache.admin_path": "/_examcache/",
        "examcache.admin_login_url": "/login",
        "demo.public_url": f"http://127.0.0.1:{port}",
        "mail.transport": "smtp",
        "mail.host": "127.0.0.1",
        "mail.port": str(smtp_sink.port),
        "mail.queue_url": private_redis.url,
        "mail.queue_name": f"admin-{uuid.uuid4().hex[:8]}",
        "mail.relay_interval": "1",
        "mail.workers": "2",
        "mail.shutdown_timeout": "5",
    })
    consumer = ConsumerProcess(write_ini(str(tmp_path / "demo.ini"), settings),
                               str(tmp_path / "consumer.log"))
    app = demo_app.make_config(dict(settings)).make_wsgi_app()
    server = StopableWSGIServer.create(app, host="127.0.0.1", port=port, threads=4)
    try:
        consumer.start()
        yield server.application_url.rstrip("/"), consumer
    finally:
        server.shutdown()
        consumer.stop()
        app.registry["dbengine"].dispose()
        get_policy(app.registry).close()
        get_mail_queue(app.registry).close()
        app.registry["demo.throttle"].close()


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def register(base: str, email: str) -> str:
    body = post_json(f"{base}/api/auth/register",
                     {"email": email, "password": "correct horse battery", "name": "Student"})
    return body["email"]["jobId"]


def job_state(db, job_id: str):
    with db.connect() as conn:
        return conn.execute(select(outbox_table.c.state, outbox_table.c.attempts)
                            .where(outbox_table.c.id == job_id)).first()


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def log_in(page, base: str, email: str, password: str, start: str = "/_examcache/"):
    page.goto(f"{base}{start}")
    assert page.url.startswith(f"{base}/login?next="), page.url  # anonymous: sent to log in
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")


def test_filter_failed_jobs_retry_one_and_see_it_delivered(demo_system, browser, smtp_sink, db):
    started = time.monotonic()
    base, consumer = demo_system
    smtp_sink.handler.refuse["ada@example.com"] = REFUSED
    failed = register(base, "ada@example.com")
    delivered = [register(base, f"{name}@example.com") for name in ("bob", "carol")]
    wait_until(lambda: job_state(db, failed) == ("failed", 1), timeout=20,
               message="the refused mail failed")
    wait_until(lambda: all(job_state(db, j)[0] == "completed" for j in delivered), timeout=20,
               message="the other mails delivered")
    smtp_sink.handler.refuse.clear()  # the server takes Ada's mail from now on

    context = browser.new_context(viewport={"width": 1180, "height": 720})
    page = context.new_page()
    log_in(page, base, TEACHER_EMAIL, TEACHER_PASSWORD)
    assert page.url == f"{base}/_examcache/"
    assert page.locator("tr[data-job]").count() == 3
    png, _written = save_screenshot(page, SCREENSHOT)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    # filter the failed jobs (the GET form, no JavaScript needed)
    page.select_option("#state", "failed")
    page.click("form[role=search] button[type=submit]")
    assert page.url == f"{base}/_examcache/?state=failed&q="
    rows = page.locator("tr[data-job]")
    assert rows.count() == 1 and rows.first.get_attribute("data-job") == failed
    assert "mailbox unavailable" in rows.first.inner_text()
    rows.first.locator("a").click()
    assert page.url == f"{base}/_examcache/jobs/{failed}"
    assert page.inner_text("#state") == "failed"

    # a POST without the CSRF token (the hidden field removed) is refused, nothing changes
    page.eval_on_selector("#retry input[name=csrf_token]", "input => input.remove()")
    with page.expect_response(f"{base}/_examcache/jobs/{failed}/retry") as refused:
        page.click("#retry button")
    assert refused.value.status == 400
    assert "CSRF token is missing or wrong" in page.inner_text("#error")
    assert job_state(db, failed) == ("failed", 1)

    # the real retry: the consumer delivers it to the sink
    page.goto(f"{base}/_examcache/jobs/{failed}")
    page.click("#retry button")
    assert page.url == f"{base}/_examcache/jobs/{failed}?done=retried"
    assert "waiting again" in page.inner_text("[role=status]")
    deadline = time.monotonic() + 20
    while page.inner_text("#state") != "completed":  # poll the page itself
        assert time.monotonic() < deadline, (page.inner_text("#state"), consumer.log())
        page.wait_for_timeout(200)
        page.reload()
    assert "<" + failed in " ".join(smtp_sink.accepted_ids())
    assert [rcpt for rcpt, _raw in smtp_sink.handler.received if "ada@example.com" in rcpt] \
        == [["ada@example.com"]]
    context.close()
    assert time.monotonic() - started < 30


def test_a_user_without_the_admin_flag_is_forbidden(demo_system, browser, db):
    base, _consumer = demo_system
    register(base, "dave@example.com")
    with db.begin() as conn:  # as if Dave had followed the link in the mail
        conn.execute(update(User).where(User.email == "dave@example.com").values(verified=True))
    page = browser.new_page()
    log_in(page, base, "dave@example.com", "correct horse battery")
    assert page.url == f"{base}/_examcache/"
    response = page.goto(f"{base}/_examcache/")
    assert response.status == 403
    assert "Your account does not have it." in page.inner_text("#error")
    assert page.goto(f"{base}/_examcache/cache").status == 403
    page.close()


def test_a_browser_gets_the_landing_page(demo_system, browser):
    """GET / in a browser: the landing page (issue 13, item 5), with a screenshot for the docs."""
    base, _consumer = demo_system
    page = browser.new_page()
    response = page.goto(f"{base}/")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "pyramid_examcache demo" in page.inner_text("h1")
    routes = page.locator("table code").all_inner_texts()
    assert "/api/exams/{examId}/questions" in routes and "/api/auth/login" in routes
    admin = page.get_by_role("link", name="Admin: mail jobs and cache")
    assert admin.get_attribute("href").endswith("/_examcache/")
    png, _written = save_screenshot(page, LANDING_SCREENSHOT, full_page=True)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    page.close()
