"""Issue 19 (accounts half), through waitress, PostgreSQL and Redis: sign-up throttles
(per client, per target address, a daily cap; 429 + Retry-After naming the limit), argon2
in bounded slots (503 + Retry-After; other requests stay fast during a burst), revocable
logins (logout revokes the cookie and the bearer; expiry capped at demo.token_ttl), no
account pre-hijack, no lockout of an owner by others, resend timing that tells nothing."""
from __future__ import annotations

import ast
import re
import statistics
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from demo_app.models import User
from demo_app.sample import TEACHER_EMAIL, TEACHER_PASSWORD
from demo_app.security import make_login_token

from .conftest import SECRET
from .security_site import browser_login, form_token, link_of, mails_to, served

PASSWORD = "correct horse battery"
#: production.ini's argon2 cost (the demo.* defaults)
PRODUCTION_ARGON2 = {"demo.argon2_time_cost": "3", "demo.argon2_memory_cost": "65536",
                     "demo.argon2_parallelism": "4"}


@pytest.fixture
def site(settings, private_redis):
    with served(settings, private_redis.url) as s:
        yield s


def register(site, email: str, password: str = PASSWORD, client: str = "198.51.100.1",
             name: str = "Student"):
    return site.request("POST", "/api/auth/register", client=client,
                        json={"email": email, "password": password, "name": name})


def api_login(site, email: str, password: str, client: str = "198.51.100.200"):
    return site.request("POST", "/api/auth/login", client=client,
                        json={"email": email, "password": password})


# -- 1. throttled sign-up ---------------------------------------------------------------

def test_a_burst_of_registrations_from_one_client_gets_429s_and_no_5xx(site, db):
    """32 registrations back to back from one client (a script's loop; concurrent ones
    are the hashing slots' test below): 10 pass (demo.signup_limit), 22 are 429."""
    responses = [register(site, f"burst{i}@example.com", client="203.0.113.5")
                 for i in range(32)]
    statuses = [r.status_code for r in responses]
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses == [201] * 10 + [429] * 22, statuses
    for res in responses[10:]:
        body = res.json()
        assert 0 < int(res.headers["Retry-After"]) <= 600
        assert body["retryAfter"] == int(res.headers["Retry-After"])
        assert body["limit"] == {"name": "signup:client", "max": 10, "window": 600}
    with db.connect() as conn:  # nothing was written for the refused ones
        assert len(conn.execute(select(User.id).where(User.email.like("burst%"))).all()) == 10
    assert len(mails_to(db, "burst10@example.com")) == 0
    # another client is not affected, and resend shares the per-client budget
    assert register(site, "other@example.com", client="203.0.113.6").status_code == 201
    res = site.request("POST", "/api/auth/resend-verification", client="203.0.113.5",
                       json={"email": "burst0@example.com"})
    assert res.status_code == 429 and res.json()["limit"]["name"] == "signup:client"


def test_mails_to_one_address_are_limited_per_window_and_per_day(settings, private_redis, db):
    with served({**settings, "demo.signup_daily_limit": "5"}, private_redis.url) as site:
        target = "target@example.com"
        # from many clients: the per-address limit (3 per window) holds
        got = [register(site, target, client=f"198.51.100.{i}").status_code for i in range(1, 5)]
        assert got == [201, 201, 201, 429]
        res = register(site, target, client="198.51.100.9")
        assert res.json()["limit"] == {"name": "signup:address", "max": 3, "window": 600}
        assert 0 < int(res.headers["Retry-After"]) <= 600
        assert len(mails_to(db, target)) == 3
    # the daily cap, once the per-window limit is out of the way
    with served({**settings, "demo.signup_daily_limit": "5", "demo.signup_address_limit": "100",
                 "demo.resend_interval": "1"}, private_redis.url) as site:
        res = [register(site, target, client=f"198.51.101.{i}") for i in range(1, 4)]
        assert [r.status_code for r in res] == [201, 201, 429]  # 3 before + 2 = the cap of 5
        assert res[-1].json()["limit"] == {"name": "signup:daily", "max": 5, "window": 86400}
        assert 0 < int(res[-1].headers["Retry-After"]) <= 86400
        resend = site.request("POST", "/api/auth/resend-verification", client="198.51.101.9",
                              json={"email": target})
        assert resend.status_code == 429 and resend.json()["limit"]["name"] == "signup:daily"
        assert len(mails_to(db, target)) == 5


# -- 1b. hashing slots ------------------------------------------------------------------

def test_full_hashing_slots_answer_503_with_retry_after(settings, private_redis):
    with served({**settings, "demo.hash_slots": "1", "demo.hash_wait": "0.05"},
                private_redis.url) as site:
        slots = site.app.registry["demo.hash_slots"]
        with slots.slot():  # a long hash elsewhere holds the only slot
            res = api_login(site, TEACHER_EMAIL, TEACHER_PASSWORD)
            assert res.status_code == 503 and res.headers["Retry-After"] == "1"
            assert res.json()["status"] == 503
            reg = register(site, "busy@example.com")
            assert reg.status_code == 503 and reg.headers["Retry-After"] == "1"
            page = site.request("GET", "/login")
            html = site.request("POST", "/login", cookies={"demo_csrf": page.cookies.get(
                "demo_csrf") or page.raw.headers.getlist("Set-Cookie")[0].split(";")[0]
                .split("=", 1)[1]}, data={"email": TEACHER_EMAIL, "password": TEACHER_PASSWORD,
                                          "csrf_token": form_token(page.text)})
            assert html.status_code == 503 and html.headers["Retry-After"] == "1"
            assert "text/html" in html.headers["Content-Type"]
        assert api_login(site, TEACHER_EMAIL, TEACHER_PASSWORD).status_code == 200
        assert register(site, "busy@example.com").status_code == 201


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def timed_gets(site, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        res = site.request("GET", f"/api/auth/verify?token={uuid.uuid4().hex}")
        out.append(time.perf_counter() - start)
        assert res.status_code == 400  # uncached: a database lookup every time
    return out


#: the attackers: another process (another machine, really), 24 threads registering in a loop
ATTACKERS = r"""
import collections, sys, threading, time, requests
base, seconds = sys.argv[1], float(sys.argv[2])
counts, lock, end = collections.Counter(), threading.Lock(), time.monotonic() + seconds
def attacker(k):
    http, i = requests.Session(), 0
    while time.monotonic() < end:
        res = http.post(base + "/api/auth/register", timeout=60,
                        headers={"X-Forwarded-For": f"10.9.{k}.{i % 250}"},
                        json={"email": f"flood{k}-{i}@example.com", "name": "F",
                              "password": "correct horse battery"})
        with lock:
            counts[res.status_code] += 1
        i += 1
threads = [threading.Thread(target=attacker, args=(k,)) for k in range(24)]
[t.start() for t in threads]
print("started", flush=True)
[t.join() for t in threads]
print(dict(counts), flush=True)
"""


def test_an_uncached_get_stays_fast_during_a_registration_burst(settings, private_redis):
    """24 concurrent clients (distinct addresses, so the per-client limit does not stop
    them: only the hashing slots do) register with production's argon2 cost, from another
    process, while an unrelated uncached GET is timed. Measured on the 2-core box (other
    test suites running, load average 5-18): p95 5-32 ms idle, 0.13-0.2 s during the
    burst (once 1.2 s, when the idle p95 was 0.15 s too); with the slots reverted
    (demo.hash_slots = 100) 34 s. The bound, 1.5 s, leaves room for a busier box."""
    burst_settings = {**settings, **PRODUCTION_ARGON2, "demo.signup_limit": "1000"}
    with served(burst_settings, private_redis.url) as site:
        quiet = timed_gets(site, 40)
        proc = subprocess.Popen([sys.executable, "-c", ATTACKERS, site.base, "15"],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "started"
            time.sleep(1)  # not a negative proof: lets the burst fill the server's queue
            busy = timed_gets(site, 40)
            counts = ast.literal_eval(proc.stdout.readline().strip())
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        print(f"uncached GET p95: {p95(quiet) * 1000:.0f} ms idle, "
              f"{p95(busy) * 1000:.0f} ms during the burst; burst statuses: {counts}")
        assert set(counts) <= {201, 503}, counts
        assert counts.get(201) and counts.get(503)
        assert p95(quiet) < 0.5
        assert p95(busy) <= 1.5, f"p95 {p95(busy):.2f} s during the burst"


# -- 3. revocable logins ----------------------------------------------------------------

def viewer(site, token: str):
    res = site.request("GET", "/api/exams/1", headers={"Authorization": f"Bearer {token}"})
    assert res.status_code == 200
    return (res.json().get("viewer") or {}).get("email")


def put_question(site, token: str) -> int:
    return site.request("PUT", "/api/exams/1/questions/1",
                        headers={"Authorization": f"Bearer {token}"},
                        json={"text": "What is 2 + 2?"}).status_code


def test_logout_revokes_the_cookie_and_the_bearer_token(site):
    cookies = browser_login(site, TEACHER_EMAIL, TEACHER_PASSWORD)
    bearer = api_login(site, TEACHER_EMAIL, TEACHER_PASSWORD).json()["token"]
    assert site.request("GET", "/_examcache/", cookies=cookies).status_code == 200
    assert viewer(site, bearer) == TEACHER_EMAIL and put_question(site, bearer) == 200

    page = site.request("GET", "/login", cookies=cookies)
    assert "Log out" in page.text
    out = site.request("POST", "/logout", cookies=cookies, headers={"Origin": site.public_url},
                       data={"csrf_token": form_token(page.text)})
    assert out.status_code == 303

    again = site.request("GET", "/_examcache/", cookies=cookies)  # the old cookie, replayed
    assert again.status_code == 303 and "/login" in again.headers["Location"]
    assert viewer(site, bearer) is None and put_question(site, bearer) == 401
    # a new login works again
    fresh = api_login(site, TEACHER_EMAIL, TEACHER_PASSWORD).json()["token"]
    assert viewer(site, fresh) == TEACHER_EMAIL


def test_a_token_is_capped_at_token_ttl_whatever_its_expiry_says(site, db):
    with db.connect() as conn:
        uid = conn.scalar(select(User.id).where(User.email == TEACHER_EMAIL))
    three_years = 3 * 365 * 86400
    young = make_login_token(SECRET, uid, three_years, now=time.time() - 60)
    old = make_login_token(SECRET, uid, three_years, now=time.time() - 3600 - 60)
    future = make_login_token(SECRET, uid, three_years, now=time.time() + 3600)
    assert viewer(site, young) == TEACHER_EMAIL  # the secret is right: younger than the ttl
    assert viewer(site, old) is None and put_question(site, old) == 401
    assert viewer(site, future) is None  # an issue time ahead of the clock
    cookie = {"demo_auth": old}
    assert site.request("GET", "/_examcache/", cookies=cookie).status_code == 303


# -- 4. smaller fixes -------------------------------------------------------------------

def test_the_mailbox_owner_ends_up_in_control_of_a_pre_registered_address(site, db):
    victim = "victim@example.com"
    assert register(site, victim, "attacker's password", client="198.51.100.66",
                    name="Attacker").status_code == 201
    attacker_link = link_of(mails_to(db, victim)[-1])
    # the victim registers too: not 409 -- the pending password, name and link are replaced
    res = register(site, victim, "the victim's own password", client="192.0.2.44", name="Vic")
    assert res.status_code == 201 and res.json()["user"]["name"] == "Vic"
    victim_link = link_of(mails_to(db, victim)[-1])
    assert site.request("GET", attacker_link).status_code == 400  # replaced
    assert site.request("GET", victim_link).status_code == 200
    assert api_login(site, victim, "attacker's password").status_code == 401
    assert api_login(site, victim, "the victim's own password").status_code == 200
    # verified now: registering it again is 409
    assert register(site, victim, "attacker's password", client="198.51.100.67"
                    ).status_code == 409


def test_wrong_passwords_from_many_clients_do_not_lock_the_owner_out(site):
    for i in range(11):
        res = api_login(site, TEACHER_EMAIL, "wrong password", client=f"10.1.0.{i + 1}")
        assert res.status_code == 401
    assert api_login(site, TEACHER_EMAIL, TEACHER_PASSWORD, client="10.2.0.1").status_code == 200
    html = browser_login(site, TEACHER_EMAIL, TEACHER_PASSWORD, client="10.2.0.2")
    assert site.request("GET", "/_examcache/", cookies=html).status_code == 200


def test_wrong_passwords_back_off_per_address_and_client(settings, private_redis):
    # the per-client limit (demo.login_limit) out of the way: the backoff alone
    with served({**settings, "demo.login_limit": "1000"}, private_redis.url) as site:
        backoff(site)


def backoff(site) -> None:
    guesser = "10.3.0.1"
    for _ in range(5):  # demo.login_free_failures
        assert api_login(site, TEACHER_EMAIL, "wrong", client=guesser).status_code == 401
    assert api_login(site, TEACHER_EMAIL, "wrong", client=guesser).status_code == 401
    waits = []
    for expected in (1, 2, 4):
        res = api_login(site, TEACHER_EMAIL, "wrong", client=guesser)
        assert res.status_code == 429, res.text
        body = res.json()
        assert body["limit"]["name"] == "login:address+client"
        waits.append(int(res.headers["Retry-After"]))
        assert waits[-1] == expected
        # even the right password waits, from this client only
        assert api_login(site, TEACHER_EMAIL, TEACHER_PASSWORD, client=guesser).status_code == 429
        deadline = time.monotonic() + expected + 10
        while True:  # the wait ends; the next wrong password doubles it
            res = api_login(site, TEACHER_EMAIL, "wrong", client=guesser)
            if res.status_code == 401:
                break
            assert res.status_code == 429 and time.monotonic() < deadline
            time.sleep(0.2)
    assert api_login(site, TEACHER_EMAIL, TEACHER_PASSWORD, client="10.3.0.2").status_code == 200


def test_resend_costs_the_same_for_known_and_unknown_addresses(settings, private_redis, db,
                                                               teacher_hash):
    known = [f"pending{i}@example.com" for i in range(40)]
    unknown = [f"nobody{i}@example.com" for i in range(40)]
    with Session(db) as session, session.begin():
        for email in known:
            session.execute(insert(User).values(email=email, name="Pending",
                                                password_hash=teacher_hash, verified=False))
    with served({**settings, "demo.signup_limit": "1000"}, private_redis.url) as site:
        for warm in ("warm1@example.com", "warm2@example.com"):  # templates, connections
            site.request("POST", "/api/auth/resend-verification", json={"email": warm})
        times: dict[str, list[float]] = {"known": [], "unknown": []}
        for k, u in zip(known, unknown):  # interleaved: drift hits both alike
            for kind, email in (("known", k), ("unknown", u)):
                start = time.perf_counter()
                res = site.request("POST", "/api/auth/resend-verification",
                                   json={"email": email})
                times[kind].append(time.perf_counter() - start)
                assert res.status_code == 202
    med_known, med_unknown = (statistics.median(times[k]) for k in ("known", "unknown"))
    print(f"resend medians: known {med_known * 1000:.1f} ms, unknown {med_unknown * 1000:.1f} ms")
    assert abs(med_known - med_unknown) <= 0.2 * max(med_known, med_unknown), (
        med_known, med_unknown)
    # the work really was done for both: a link for the known, a fixed text for the others
    assert "/api/auth/verify?token=" in mails_to(db, known[0])[-1]["text"]
    assert "verify?token=" not in mails_to(db, unknown[0])[-1]["text"]


# -- development.ini: SQLite, the in-memory throttle ---------------------------------------

def test_the_account_flows_on_development_ini(tmp_path, monkeypatch):
    """Re-registration, resend (UPDATE ... RETURNING), the throttles in memory, the login
    form with its CSRF token and logout revocation, on development.ini's SQLite."""
    from pyramid.paster import get_appsettings

    from demo_app.scripts import initialize_db
    from pyramid_examcache.testing import get_mail_capture

    from .conftest import FAST_ARGON2, close_testapp, make_testapp
    from .helpers import bearer, verification_link
    from .test_sqlite_smoke import ROOT

    monkeypatch.setattr(initialize_db, "setup_logging", lambda config_uri: None)
    text = (ROOT / "development.ini").read_text()
    for name, value in FAST_ARGON2.items():
        text = re.sub(rf"^{re.escape(name)} = .*$", f"{name} = {value}", text, flags=re.M)
    ini = tmp_path / "development.ini"
    ini.write_text(text)
    initialize_db.main(["examcache-initdb", str(ini)])
    settings = dict(get_appsettings(str(ini)))
    assert settings["examcache.redis_url"] == "memory://"
    app = make_testapp(settings)
    # WebTest sends the page's URL as Referer: the host of development.ini's demo.public_url
    app.extra_environ = {"HTTP_HOST": "localhost:6543"}
    try:
        mail = get_mail_capture(app)
        new = {"email": "dev@example.com", "password": "first password", "name": "A"}
        app.post_json("/api/auth/register", new, status=201)
        first = verification_link(mail.last)
        app.post_json("/api/auth/register", {**new, "password": "second password"}, status=201)
        app.get(first, status=400)
        app.post_json("/api/auth/resend-verification", {"email": "dev@example.com"}, status=202)
        app.post_json("/api/auth/resend-verification", {"email": "none@example.com"}, status=202)
        assert "no account awaits verification" in mail.last.text.replace("\n", " ")
        link = [verification_link(m) for m in mail.outbox if m.to == ["dev@example.com"]][-1]
        app.get(link, status=200)
        creds = {"email": "dev@example.com"}
        app.post_json("/api/auth/login", {**creds, "password": "first password"}, status=401)
        token = app.post_json("/api/auth/login", {**creds, "password": "second password"}
                              ).json["token"]
        page = app.get("/login")
        form = page.forms[0]
        form["email"], form["password"] = "dev@example.com", "second password"
        form.submit(status=303)
        app.get("/login").forms[0].submit(status=303)  # log out
        assert app.get("/api/exams/1", headers=bearer(token)).json["viewer"] is None
        for i in range(9):  # the in-memory sign-up limit (10 per client, 4 used above)
            res = app.post_json("/api/auth/register", {**new, "email": f"d{i}@example.com"},
                                expect_errors=True)
            assert res.status_int == (201 if i < 6 else 429), (i, res.status_int)
    finally:
        close_testapp(app)
