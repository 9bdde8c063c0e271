"""Issue 19 (CSRF), through waitress, PostgreSQL and Redis, on the production-like
https ``demo.public_url`` served over http (TLS ends at a proxy: Pyramid's own Origin
check, https only, would not run): tokens must be ones this server issued for this
visitor and this login, and ``Origin`` (else ``Referer``) must be the public origin."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from demo_app.sample import TEACHER_EMAIL, TEACHER_PASSWORD
from pyramid_examcache.mail.outbox import outbox_table

from .security_site import browser_login, form_token, served, set_cookies

EVIL = "https://evil.example"


@pytest.fixture
def site(settings, private_redis):
    with served(settings, private_redis.url) as s:
        yield s


def waiting_job(site, db) -> str:
    """A mail job in the outbox, ``waiting`` (no consumer runs here)."""
    res = site.request("POST", "/api/auth/register", client="198.51.100.3",
                       json={"email": "ada@example.com", "password": "x" * 10, "name": "Ada"})
    assert res.status_code == 201
    return res.json()["email"]["jobId"]


def job_state(db, job_id: str) -> str:
    """``waiting``, or ``cancelled`` once the admin's cancel went through."""
    with db.connect() as conn:
        state, reason = conn.execute(select(outbox_table.c.state, outbox_table.c.failed_reason)
                                     .where(outbox_table.c.id == job_id)).one()
    return "cancelled" if state == "failed" and "cancel" in (reason or "") else state


def login_post(site, cookies, token, origin=None, referer=None):
    headers = {}
    if origin:
        headers["Origin"] = origin
    if referer:
        headers["Referer"] = referer
    return site.request("POST", "/login", cookies=cookies, headers=headers,
                        data={"email": TEACHER_EMAIL, "password": TEACHER_PASSWORD,
                              "csrf_token": token})


def test_the_real_forms_still_work(site, db):
    job = waiting_job(site, db)
    cookies = browser_login(site, TEACHER_EMAIL, TEACHER_PASSWORD)
    page = site.request("GET", f"/_examcache/jobs/{job}", cookies=cookies)
    assert page.status_code == 200
    done = site.request("POST", f"/_examcache/jobs/{job}/cancel", cookies=cookies,
                        headers={"Origin": site.public_url},
                        data={"csrf_token": form_token(page.text)})
    assert done.status_code == 303 and job_state(db, job) == "cancelled"
    cache = site.request("GET", "/_examcache/cache", cookies=cookies)
    res = site.request("POST", "/_examcache/cache/invalidate", cookies=cookies,
                       headers={"Referer": site.public_url + "/_examcache/cache"},
                       data={"csrf_token": form_token(cache.text), "key": "some-key"})
    assert res.status_code == 303
    # a client without Origin or Referer (not a browser) relies on the token alone
    out_page = site.request("GET", "/login", cookies=cookies)
    out = site.request("POST", "/logout", cookies=cookies,
                       data={"csrf_token": form_token(out_page.text)})
    assert out.status_code == 303


def test_a_planted_double_submit_token_is_refused(site, db):
    planted = "A" * 40  # never issued: the old policy accepted any cookie == field
    # login CSRF: the victim's browser would log into the attacker's account
    res = login_post(site, {"demo_csrf": planted}, planted, origin=site.public_url)
    assert res.status_code == 400 and "demo_auth" not in set_cookies(res)
    # on the admin POSTs, with the admin's own login cookie
    job = waiting_job(site, db)
    admin = browser_login(site, TEACHER_EMAIL, TEACHER_PASSWORD)
    for path, extra in ((f"/_examcache/jobs/{job}/cancel", {}),
                        (f"/_examcache/jobs/{job}/retry", {}),
                        ("/_examcache/cache/invalidate", {"key": "k"})):
        res = site.request("POST", path, cookies={**admin, "demo_csrf": planted},
                           headers={"Origin": site.public_url},
                           data={"csrf_token": planted, **extra})
        assert res.status_code == 400, (path, res.status_code)
    assert job_state(db, job) == "waiting"
    # a pair this server did issue -- but to the attacker, anonymous -- is refused too
    mine = site.request("GET", "/login")
    theirs = {**admin, "demo_csrf": set_cookies(mine)["demo_csrf"]}
    res = site.request("POST", f"/_examcache/jobs/{job}/cancel", cookies=theirs,
                       headers={"Origin": site.public_url},
                       data={"csrf_token": form_token(mine.text)})
    assert res.status_code == 400 and job_state(db, job) == "waiting"
    # a forged visitor cookie (a signature made without demo.secret) as well
    visitor = set_cookies(mine)["demo_csrf"].split(".")[0]
    res = login_post(site, {"demo_csrf": f"{visitor}.forged"}, form_token(mine.text),
                     origin=site.public_url)
    assert res.status_code == 400


def test_a_cross_origin_post_is_refused(site, db):
    job = waiting_job(site, db)
    page = site.request("GET", "/login")
    cookies, token = set_cookies(page), form_token(page.text)
    for origin, referer in ((EVIL, None), ("null", None), (None, EVIL + "/x"),
                            ("http://exams.example.com", None),  # another scheme
                            (EVIL, site.public_url + "/login")):  # Origin decides
        res = login_post(site, cookies, token, origin=origin, referer=referer)
        assert res.status_code == 400, (origin, referer)
        assert "demo_auth" not in set_cookies(res) and "another site" in res.text
    admin = browser_login(site, TEACHER_EMAIL, TEACHER_PASSWORD)
    detail = site.request("GET", f"/_examcache/jobs/{job}", cookies=admin)
    res = site.request("POST", f"/_examcache/jobs/{job}/cancel", cookies=admin,
                       headers={"Origin": EVIL}, data={"csrf_token": form_token(detail.text)})
    assert res.status_code == 400 and job_state(db, job) == "waiting"
    # the same form from the public origin passes
    res = site.request("POST", f"/_examcache/jobs/{job}/cancel", cookies=admin,
                       headers={"Origin": site.public_url},
                       data={"csrf_token": form_token(detail.text)})
    assert res.status_code == 303 and job_state(db, job) == "cancelled"


def test_a_form_token_does_not_survive_logging_in(site):
    """A token rendered before logging in does not pass afterwards: the login changes
    what tokens are bound to (and the visitor id is renewed). A token issued to an
    anonymous visitor does not pass for a login either (the planted test above)."""
    anonymous = site.request("GET", "/login")
    cookies = set_cookies(anonymous)
    done = login_post(site, cookies, form_token(anonymous.text), origin=site.public_url)
    assert done.status_code == 303
    cookies.update(set_cookies(done))
    stale = site.request("POST", "/logout", cookies=cookies, headers={"Origin": site.public_url},
                         data={"csrf_token": form_token(anonymous.text)})
    assert stale.status_code == 400
    fresh = site.request("GET", "/login", cookies=cookies)
    assert form_token(fresh.text) != form_token(anonymous.text)
    out = site.request("POST", "/logout", cookies=cookies, headers={"Origin": site.public_url},
                       data={"csrf_token": form_token(fresh.text)})
    assert out.status_code == 303
