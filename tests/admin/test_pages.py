"""The admin page through WebTest, on SQLite and PostgreSQL: permission, CSRF, the list
(paging, filter, search, escaping), bad input, a job's detail, retry, cancel, the cache."""
from __future__ import annotations

import datetime as dt
import re

import pytest

from pyramid_examcache.cache import get_policy
from pyramid_examcache.mail.outbox import CANCELLED_REASON

from .support import ADMIN, USER, add_job, admin_app, csrf_of, job_row

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)


def rows_of(page) -> list[str]:
    """The job ids listed on a page, in order."""
    return re.findall(r'<tr data-job="([0-9a-f]+)">', page.text)


# -- who may see it -------------------------------------------------------------------------

ROUTES = [("get", "/_examcache/"), ("get", "/_examcache/cache"), ("get", "/_examcache/jobs/{id}"),
          ("post", "/_examcache/jobs/{id}/retry"), ("post", "/_examcache/jobs/{id}/cancel"),
          ("post", "/_examcache/cache/invalidate"), ("get", "/_examcache")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_page_is_forbidden_without_the_permission(app, engine, method, path):
    job = add_job(engine, state="failed")
    url = path.format(id=job)
    for headers in ({}, USER):
        page = getattr(app, method)(url, headers=headers, status=403)
        assert "examcache.admin" in page.text  # says which permission is missing
        assert page.headers["Cache-Control"] == "no-store"
    assert job_row(engine, job).state == "failed"
    expected = 303 if path == "/_examcache" else 200
    if method == "get":
        assert getattr(app, method)(url, headers=ADMIN).status_int == expected


def test_anonymous_browsers_go_to_the_login_url(db_url, engine):
    app = admin_app(db_url, engine=engine, **{"examcache.admin_login_url": "/login"})
    page = app.get("/_examcache/?state=failed", status=303)
    assert page.location == "http://localhost/login?next=%2F_examcache%2F%3Fstate%3Dfailed"
    app.get("/_examcache/", headers=USER, status=403)  # logged in without the permission
    app.post("/_examcache/cache/invalidate", status=403)  # a POST is not redirected


def test_another_permission_name(db_url, engine):
    app = admin_app(db_url, engine=engine, **{"examcache.admin_permission": "ops.view"})
    page = app.get("/_examcache/", headers=ADMIN, status=200)
    assert "Mail jobs" in page.text
    assert "ops.view" in app.get("/_examcache/", headers=USER, status=403).text


# -- CSRF -------------------------------------------------------------------------------------

def test_posts_without_the_csrf_token_are_refused_and_change_nothing(app, engine):
    failed = add_job(engine, state="failed", failed_reason="550 no")
    waiting = add_job(engine, state="waiting")
    policy = get_policy(app.app.registry)
    policy.get_or_set("exam:1", lambda: {"v": 1})
    for url, form in ((f"/_examcache/jobs/{failed}/retry", {}),
                      (f"/_examcache/jobs/{waiting}/cancel", {}),
                      ("/_examcache/cache/invalidate", {"key": "exam:1"})):
        for token in (None, "forged-token"):
            body = dict(form, **({"csrf_token": token} if token else {}))
            page = app.post(url, body, headers=ADMIN, status=400)
            assert "CSRF token" in page.text
    assert job_row(engine, failed).state == "failed"
    assert job_row(engine, waiting).state == "waiting"
    assert policy.get_or_set("exam:1", lambda: {"v": 2}) == {"v": 1}  # still cached
    # with the token from the page, the same POST goes through
    token = csrf_of(app.get(f"/_examcache/jobs/{failed}", headers=ADMIN))
    app.post(f"/_examcache/jobs/{failed}/retry", {"csrf_token": token}, headers=ADMIN, status=303)
    assert job_row(engine, failed).state in ("waiting", "active", "completed")


def test_the_token_is_also_accepted_in_the_header(app, engine):
    job = add_job(engine, state="waiting")
    token = csrf_of(app.get(f"/_examcache/jobs/{job}", headers=ADMIN))
    app.post(f"/_examcache/jobs/{job}/cancel", headers={**ADMIN, "X-CSRF-Token": token},
             status=303)
    assert job_row(engine, job).state == "failed"


# -- the list -----------------------------------------------------------------------------------

def test_paging_newest_first(app, engine):
    ids = [add_job(engine, subject=f"mail {i}", created=NOW + dt.timedelta(seconds=i))
           for i in range(23)]
    newest_first = ids[::-1]
    first = app.get("/_examcache/?size=10", headers=ADMIN)
    assert rows_of(first) == newest_first[:10]
    assert "page 1 of 3 · 23 jobs" in first.text
    admin = {"HTTP_X_TEST_USER": "admin"}
    third = first.click(href=r"page=2", extra_environ=admin).click(href=r"page=3",
                                                                  extra_environ=admin)
    assert rows_of(third) == newest_first[20:]
    assert "older →" not in third.text and "← newer" in third.text
    beyond = app.get("/_examcache/?size=10&page=4", headers=ADMIN)
    assert rows_of(beyond) == [] and "No mail job matches." in beyond.text
    assert len(rows_of(app.get("/_examcache/", headers=ADMIN))) == 23  # default size 25


def test_filter_by_state_with_counts(app, engine):
    states = ["waiting", "failed", "completed", "failed", "delayed", "active"]
    ids = {add_job(engine, state=s, created=NOW + dt.timedelta(seconds=i)): s
           for i, s in enumerate(states)}
    page = app.get("/_examcache/?state=failed", headers=ADMIN)
    assert set(rows_of(page)) == {i for i, s in ids.items() if s == "failed"}
    assert re.search(r'class="on">failed <span class="muted">2</span>', page.text)
    assert re.search(r'>all <span class="muted">6</span>', page.text)
    # the filter form round-trips its values
    form = page.forms[0]
    assert form["state"].value == "failed"
    form["state"] = "delayed"
    assert rows_of(form.submit(headers=ADMIN)) == [i for i, s in ids.items() if s == "delayed"]


def test_search_by_recipient_or_subject(app, engine):
    alice = add_job(engine, subject="Verify your address", to=["Alice@Example.com"],
                    created=NOW)
    bob = add_job(engine, subject="Invoice 100% paid", to=["bob@example.org"],
                  created=NOW + dt.timedelta(seconds=1))
    carol = add_job(engine, subject="under_score", to=["carol@example.net", "alice2@x.org"],
                    state="failed", created=NOW + dt.timedelta(seconds=2))
    jose = add_job(engine, subject="Hola", to=["josé@example.com"],
                   created=NOW + dt.timedelta(seconds=3))

    def search(q, **params):
        return rows_of(app.get("/_examcache/", {"q": q, **params}, headers=ADMIN))

    assert search("alice") == [carol, alice]  # recipients, case-insensitive, any of them
    assert search("ALICE@example.COM") == [alice]
    assert search("invoice") == [bob]  # subject, case-insensitive
    assert search("100%") == [bob]  # % matches itself
    assert search("0%") == [bob] and search("%") == [bob]
    assert search("i_e") == [] and search("r_s") == [carol]  # _ matches itself only (not "ice")
    assert search("josé") == [jose]  # non-ASCII, stored as \u00e9 in the JSON
    assert search("alice", state="failed") == [carol]  # combined with the state
    assert search('"') == [] and search("\\") == []  # JSON's own quotes are not matched
    assert search("to") == [] and search("cc") == []  # nor the JSON's keys
    assert search("nobody") == []


def test_everything_is_escaped(app, engine):
    evil = '<script>alert("x")</script>'
    job = add_job(engine, subject=evil, to=['"<img src=x onerror=alert(1)>"@example.com'],
                  state="failed", failed_reason=f"550 {evil}",
                  failed_recipients={"<b>x</b>@example.com": "550 <i>no</i>"},
                  headers={"X-Evil": "<svg onload=alert(1)>"})
    pages = [app.get("/_examcache/", {"q": evil}, headers=ADMIN),
             app.get(f"/_examcache/jobs/{job}", headers=ADMIN),
             app.get("/_examcache/", {"state": evil}, headers=ADMIN, status=400)]
    assert job in pages[0].text  # found by its subject
    for page in pages:
        for raw in ("<script>alert", "<img src=x", "<b>x</b>", "<i>no</i>", "<svg onload"):
            assert raw not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in pages[1].text
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[1].text
    assert "&lt;svg onload=alert(1)&gt;" in pages[1].text
    for page in pages:
        assert "script-src" not in page.headers["Content-Security-Policy"]  # no script at all
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Frame-Options"] == "DENY"


def test_escaped_even_when_the_app_turns_jinja2_autoescape_off(db_url, engine):
    app = admin_app(db_url, engine=engine, **{"jinja2.autoescape": "false"})
    job = add_job(engine, subject="<script>x</script>")
    page = app.get(f"/_examcache/jobs/{job}", headers=ADMIN)
    assert "<script>x" not in page.text and "&lt;script&gt;x" in page.text


@pytest.mark.parametrize("query,field", [
    ("state=bogus", "state"), ("state=failed&state=waiting", "state"), ("state=FAILED", "state"),
    ("page=0", "page"), ("page=-1", "page"), ("page=abc", "page"), ("page=1.5", "page"),
    ("page=99999999999999999999", "page"), ("page=100001", "page"), ("page=%D9%A3", "page"),
    ("size=0", "size"), ("size=201", "size"), ("size=1e3", "size"), ("size=" + "9" * 400, "size"),
    ("q=" + "x" * 201, "q"), ("q=a%00b", "q"), ("q=a%0Ab", "q"),
])
def test_bad_query_input_is_a_400_naming_the_field(app, query, field):
    page = app.get(f"/_examcache/?{query}", headers=ADMIN, status=400)
    assert f"bad parameter {field}:" in page.text
    assert page.content_type == "text/html"


def test_other_bad_requests(app, engine):
    assert "UTF-8" in app.get("/_examcache/?q=%ff", headers=ADMIN, status=400).text
    app.get("/_examcache/jobs/not-a-job-id!", headers=ADMIN, status=404)
    app.get("/_examcache/jobs/" + "a" * 65, headers=ADMIN, status=404)
    app.get("/_examcache/jobs/0123456789abcdef0123456789abcdef", headers=ADMIN, status=404)
    job = add_job(engine)
    page = app.get(f"/_examcache/jobs/{job}/retry", headers=ADMIN, status=405)
    assert page.headers["Allow"] == "POST" and page.content_type == "text/html"
    app.post("/_examcache/", headers=ADMIN, status=405)


# -- one job, retry, cancel ---------------------------------------------------------------------

def test_a_jobs_detail(app, engine):
    later = NOW + dt.timedelta(minutes=5)
    job = add_job(engine, subject="Report", to=["x@example.com"], state="delayed", attempts=4,
                  failed_reason="451 4.3.0 try again later", next_attempt_at=later,
                  failed_recipients={"y@example.com": "550 5.1.1 no such user"}, created=NOW)
    page = app.get(f"/_examcache/jobs/{job}", headers=ADMIN)
    text = page.text
    assert '<dd id="attempts">4</dd>' in text
    assert "451 4.3.0 try again later" in text
    assert "2026-11-29 12:05:00 UTC" in text  # next attempt
    assert "2026-11-29 12:00:00 UTC" in text  # created
    assert "y@example.com" in text and "550 5.1.1 no such user" in text
    assert "id=\"cancel\"" in text and "id=\"retry\"" not in text  # delayed: cancel only
    assert "<p>hi</p>" not in text and "&lt;p&gt;hi" not in text  # never the body


def test_retry_a_failed_job_through_the_form(app, engine):
    job = add_job(engine, state="failed", attempts=1, failed_reason="550 5.7.1 refused")
    page = app.get(f"/_examcache/jobs/{job}", headers=ADMIN)
    assert 'id="cancel"' not in page.text
    done = page.forms["retry"].submit(headers=ADMIN, status=303)
    assert done.location.endswith(f"/_examcache/jobs/{job}?done=retried")
    # pyramid_examcache.testing delivers in-process after the commit, like a consumer would
    row = job_row(engine, job)
    assert row.state == "completed" and row.attempts == 1 and row.retried_at is not None
    after = done.follow(headers=ADMIN)
    assert "The job is waiting again" in after.text
    assert 'id="retry"' not in after.text
    # retrying what is not failed changes nothing
    token = csrf_of(app.get("/_examcache/cache", headers=ADMIN))
    page = app.post(f"/_examcache/jobs/{job}/retry", {"csrf_token": token}, headers=ADMIN,
                    status=409)
    assert "only a failed job can be retried; this one is completed" in page.text


@pytest.mark.parametrize("state", ["waiting", "delayed"])
def test_cancel_a_waiting_or_delayed_job_then_retry_it(app, engine, state):
    job = add_job(engine, state=state, next_attempt_at=NOW if state == "delayed" else None)
    page = app.get(f"/_examcache/jobs/{job}", headers=ADMIN)
    done = page.forms["cancel"].submit(headers=ADMIN, status=303)
    row = job_row(engine, job)
    assert (row.state, row.failed_reason) == ("failed", CANCELLED_REASON)
    assert row.finished_at is not None and row.next_attempt_at is None
    page = done.follow(headers=ADMIN)
    assert "The job was cancelled" in page.text and 'id="retry"' in page.text
    page.forms["retry"].submit(headers=ADMIN, status=303)
    assert job_row(engine, job).state == "completed"


@pytest.mark.parametrize("state", ["active", "completed", "failed"])
def test_cancel_refuses_other_states(app, engine, state):
    job = add_job(engine, state=state, attempts=1)
    token = csrf_of(app.get("/_examcache/cache", headers=ADMIN))
    page = app.post(f"/_examcache/jobs/{job}/cancel", {"csrf_token": token}, headers=ADMIN,
                    status=409)
    assert f"this one is {state}" in page.text
    assert job_row(engine, job).state == state


# -- the cache ------------------------------------------------------------------------------------

def test_cache_counters_and_invalidation(app):
    policy = get_policy(app.app.registry)
    policy.get_or_set("exam:1", lambda: "one", tags=["exams"])
    policy.get_or_set("exam:2", lambda: "two", tags=["exams"])
    policy.get_or_set("exam:1", lambda: "unused")
    page = app.get("/_examcache/cache", headers=ADMIN)
    hits = policy.stats.snapshot()["hits"]
    assert hits >= 1
    assert re.search(rf'<td class="mono">hits</td><td class="num">{hits}</td>', page.text)
    form = page.forms["invalidate-key"]
    form["key"] = "exam:1"
    done = form.submit(headers=ADMIN, status=303)
    assert done.location.endswith("/_examcache/cache?done=key")
    assert policy.get_or_set("exam:1", lambda: "fresh") == "fresh"
    assert policy.get_or_set("exam:2", lambda: "not this") == "two"
    form = done.follow(headers=ADMIN).forms["invalidate-tag"]
    form["tag"] = "exams"
    form.submit(headers=ADMIN, status=303)
    assert policy.get_or_set("exam:2", lambda: "fresh too") == "fresh too"


@pytest.mark.parametrize("body,field", [({"key": "@view:x"}, "key"), ({"tag": "a\nb"}, "tag"),
                                        ({"key": "k" * 1100}, "key"), ({}, "key or tag"),
                                        ({"key": "a", "tag": "b"}, "key or tag")])
def test_bad_invalidations_are_400(app, body, field):
    token = csrf_of(app.get("/_examcache/cache", headers=ADMIN))
    page = app.post("/_examcache/cache/invalidate", {"csrf_token": token, **body},
                    headers=ADMIN, status=400)
    assert field in page.text
