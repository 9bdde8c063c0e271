"""Issue 9, item 5: the demo never answers 500 to client input, and its
security-relevant edges (links, secrets, timeouts, throttles, caching headers).

Written from the client's side: each test sends what an attacker, a broken
client or a dead database would produce and checks the answer.
"""
from __future__ import annotations

import html
import json
import re
import socket
import time
from pathlib import Path

import pytest
from pyramid.exceptions import ConfigurationError
from pyramid.paster import get_appsettings
from sqlalchemy import select, text

from demo_app.models import User
from demo_app.security import make_login_token
from demo_app.settings import parse_demo_settings

from .conftest import SECRET, base_settings, close_testapp, make_testapp
from .helpers import bearer, login, register_verified, verification_link

ROOT = Path(__file__).resolve().parents[2]
SURROGATE = "\ud800"


def raw_json(app, method: str, url: str, body: str, **kw):
    """Send ``body`` as it is (json.dumps would escape a lone surrogate the same way,
    but spelling the escape out keeps the test honest about the bytes sent)."""
    return app.request(url, method=method, body=body.encode("ascii"),
                       content_type="application/json", expect_errors=True, **kw)


# -- 1. bearer tokens with garbage signatures --------------------------------------

@pytest.mark.parametrize("signature", ["\u00e9" * 43, "abc\u00ff", "\u0080", "x" * 42 + "\u00e9",
                                       "%%%", ""])
def test_a_token_with_a_non_ascii_or_garbage_signature_is_anonymous_not_500(app, signature):
    good = make_login_token(SECRET, 1, ttl=3600)
    payload = good.rsplit(".", 1)[0]
    headers = {"Authorization": f"Bearer {payload}.{signature}"}
    res = app.get("/api/exams/1", headers=headers, status=200)
    assert res.json["viewer"] is None
    res = app.put_json("/api/exams/1/questions/1", {"text": "x"}, headers=headers, status=401)
    assert res.json["message"] == "invalid or expired token"


# -- 2. lone surrogates in JSON strings --------------------------------------------

SURROGATE_CASES = [
    ("POST", "/api/auth/login", {"email": "teacher@example.com", "password": "examcache-demo"},
     "email"),
    ("POST", "/api/auth/login", {"email": "teacher@example.com", "password": "examcache-demo"},
     "password"),
    ("POST", "/api/auth/register", {"email": "s@example.com", "password": "long enough pw",
                                    "name": "S"}, "email"),
    ("POST", "/api/auth/register", {"email": "s@example.com", "password": "long enough pw",
                                    "name": "S"}, "password"),
    ("POST", "/api/auth/register", {"email": "s@example.com", "password": "long enough pw",
                                    "name": "S"}, "name"),
    ("PUT", "/api/exams/1/questions/1", {"text": "t"}, "text"),
    ("PUT", "/api/exams/1/questions/1", {"choices": ["a", "b"]}, "choices"),
    ("POST", "/api/auth/resend-verification", {"email": "s@example.com"}, "email"),
]


def _with_surrogate(value):
    if isinstance(value, list):
        return [value[0] + SURROGATE] + value[1:]
    return value[:1] + SURROGATE + value[1:]


@pytest.mark.parametrize("method, url, body, field", SURROGATE_CASES,
                         ids=[f"{c[1].rsplit('/', 1)[-1]}-{c[3]}" for c in SURROGATE_CASES])
def test_a_lone_surrogate_in_a_string_field_is_400_naming_the_field(app, method, url, body,
                                                                    field):
    headers = bearer(login(app)) if method == "PUT" else {}
    body = {**body, field: _with_surrogate(body[field])}
    encoded = json.dumps(body)  # ensure_ascii: the surrogate travels as the escape \ud800
    assert "\\ud800" in encoded
    res = raw_json(app, method, url, encoded, headers=headers)
    assert res.status_int == 400, res
    assert field in res.json["errors"], res.json
    assert "surrogate" in res.json["errors"][field]


def test_a_lone_surrogate_in_a_field_name_is_400(app):
    res = raw_json(app, "POST", "/api/auth/login",
                   '{"email": "teacher@example.com", "password": "x", "\\udc00": 1}')
    assert res.status_int == 400 and res.json["errors"]


# -- 3. verification links from demo.public_url ------------------------------------

def test_the_verification_link_ignores_a_forged_host_header(app, mail):
    app.post_json("/api/auth/register", {"email": "v@example.com", "password": "long enough pw",
                                         "name": "V"},
                  headers={"Host": "attacker.example.net", "X-Forwarded-Host": "evil.example"},
                  extra_environ={"HTTP_HOST": "attacker.example.net"}, status=201)
    sent = mail.last
    links = [w for w in sent.text.split() if "/api/auth/verify?token=" in w]
    assert links and all(w.startswith("https://exams.example.com/api/auth/verify?token=")
                         for w in links), sent.text
    assert "attacker" not in sent.text and "attacker" not in sent.html
    assert "evil" not in sent.text and "evil" not in sent.html


@pytest.mark.parametrize("value", ["exams.example.com", "ftp://exams.example.com",
                                   "https://", "https://exams.example.com/?next=x",
                                   "https://exams.example.com/#x", "https://u:p@exams.example.com",
                                   "javascript:alert(1)"])
def test_a_malformed_demo_public_url_is_a_configuration_error(value):
    with pytest.raises(ConfigurationError, match="demo.public_url"):
        parse_demo_settings({"demo.secret": SECRET, "demo.public_url": value})


@pytest.mark.parametrize("value", [None, "", "  "])
def test_an_unset_demo_public_url_is_the_dev_server_never_the_host_header(value):
    settings = {"demo.secret": SECRET}
    if value is not None:
        settings["demo.public_url"] = value
    assert parse_demo_settings(settings).public_url == "http://localhost:6543"


def test_production_ini_sets_an_https_public_url():
    settings = get_appsettings(str(ROOT / "production.ini"))
    assert settings["demo.public_url"].startswith("https://")


@pytest.mark.parametrize("value, expected", [
    ("https://exams.example.com", "https://exams.example.com"),
    ("https://exams.example.com/", "https://exams.example.com"),
    ("http://localhost:6543", "http://localhost:6543"),
    ("https://example.com/exams/", "https://example.com/exams"),
])
def test_demo_public_url_is_normalised(value, expected):
    assert parse_demo_settings({"demo.secret": SECRET,
                                "demo.public_url": value}).public_url == expected


# -- 5. secrets ----------------------------------------------------------------------

def test_production_ini_refuses_to_start_with_its_placeholder_secret():
    settings = get_appsettings(str(ROOT / "production.ini"))
    with pytest.raises(ConfigurationError, match="demo.secret"):
        parse_demo_settings(settings)
    # the placeholder is refused anywhere, not only in production.ini
    with pytest.raises(ConfigurationError, match="demo.secret"):
        parse_demo_settings({"demo.secret": settings["demo.secret"],
                             "demo.public_url": "http://localhost:6543"})
    # with a real secret production.ini is complete (demo.public_url is there)
    ok = parse_demo_settings({**settings, "demo.secret": "a" * 64})
    assert ok.public_url.startswith("https://")


def test_development_ini_starts_with_its_own_dev_secret():
    settings = get_appsettings(str(ROOT / "development.ini"))
    demo = parse_demo_settings(settings)
    assert demo.public_url == "http://localhost:6543"
    assert "dev" in demo.secret


# -- 4. database timeouts -> 503 with Retry-After; cached reads keep working ----------

@pytest.fixture
def dead_database():
    """A 'database' that accepts TCP connections and never says a word."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)  # never accept(): the kernel completes the handshakes, nobody answers
    yield server.getsockname()[1]
    server.close()


def assert_503(res, started: float, bound: float = 10.0):
    elapsed = time.monotonic() - started
    assert res.status_int == 503, res
    assert res.content_type == "application/json"
    assert res.json["status"] == 503 and res.json["message"]
    assert int(res.headers["Retry-After"]) > 0
    assert elapsed < bound, elapsed


def test_an_unresponsive_database_is_503_within_the_timeout_and_cached_reads_still_hit(
        app, settings, dead_database):
    # warm the questions of exam 1 on the real database
    assert app.get("/api/exams/1/questions").headers["X-Cache"] == "MISS"
    warm = app.get("/api/exams/1/questions")
    assert warm.headers["X-Cache"] == "HIT"

    dead = dict(settings)
    dead["sqlalchemy.url"] = f"postgresql+psycopg://postgres@127.0.0.1:{dead_database}/examcache"
    dead["demo.db_connect_timeout"] = "2"
    dead["sqlalchemy.pool_timeout"] = "2"
    dead_app = make_testapp(dead)
    try:
        started = time.monotonic()
        hit = dead_app.get("/api/exams/1/questions", status=200)
        assert hit.headers["X-Cache"] == "HIT" and hit.body == warm.body
        assert time.monotonic() - started < 2  # served before any connection attempt

        for request in (lambda: dead_app.get("/api/exams/2/questions", expect_errors=True),
                        lambda: dead_app.post_json("/api/auth/login",
                                                   {"email": "teacher@example.com",
                                                    "password": "examcache-demo"},
                                                   expect_errors=True)):
            started = time.monotonic()
            assert_503(request(), started)
    finally:
        close_testapp(dead_app)


def test_a_statement_slower_than_the_statement_timeout_is_503(settings):
    import demo_app
    from webtest import TestApp

    config = demo_app.make_config({**settings, "demo.db_statement_timeout": "0.5"})
    config.include("pyramid_examcache.testing")
    config.add_route("slow", "/test/slow")
    config.add_view(lambda request: {"slept": request.dbsession.scalar(
        text("select pg_sleep(5) is not null"))}, route_name="slow", renderer="json")
    slow = TestApp(config.make_wsgi_app())
    try:
        started = time.monotonic()
        assert_503(slow.get("/test/slow", expect_errors=True), started, bound=4.0)
        # the pool recovers: the next request works
        assert slow.get("/api/exams/1").json["id"] == 1
    finally:
        close_testapp(slow)


# -- 6. HEAD does not consume a verification link ------------------------------------

def test_head_of_a_verification_link_does_not_consume_it(app, mail, db):
    app.post_json("/api/auth/register", {"email": "h@example.com", "password": "long enough pw",
                                         "name": "H"}, status=201)
    link = verification_link(mail.last)
    for _ in range(3):  # link scanners, previews
        res = app.head(link, status=200)
        assert res.body == b""
    with db.connect() as conn:
        assert conn.scalar(select(User.verified).where(User.email == "h@example.com")) is False
    assert app.get(link, status=200).json["user"]["verified"] is True
    assert app.head(link, status=400).body == b""  # now used: HEAD tells so, still no body
    app.get(link, status=400)


# -- 7. per-user responses: Cache-Control: private, Vary: Authorization --------------

def _vary(res) -> set[str]:
    return {v.strip().lower() for v in res.headers.get("Vary", "").split(",") if v.strip()}


def test_per_user_responses_are_private_and_vary_by_authorization(app, mail):
    res = app.post_json("/api/auth/login", {"email": "teacher@example.com",
                                            "password": "examcache-demo"})
    assert "private" in res.headers["Cache-Control"] and "no-store" in res.headers["Cache-Control"]
    assert "authorization" in _vary(res)
    token = bearer(res.json["token"])

    first = app.get("/api/exams/1", headers=token)
    second = app.get("/api/exams/1", headers=token)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    for r in (first, second):  # HITs too, and the per-user copy is still stored and served
        assert "private" in r.headers["Cache-Control"], r.headers
        assert "authorization" in _vary(r)
    assert second.json["viewer"]["email"] == "teacher@example.com"

    anonymous = app.get("/api/exams/1")
    assert "authorization" in _vary(anonymous)  # a shared cache must key on Authorization
    assert "private" not in anonymous.headers.get("Cache-Control", "")
    again = app.get("/api/exams/1")
    assert again.headers["X-Cache"] == "HIT" and "authorization" in _vary(again)

    # the shared questions list is not per user
    q = app.get("/api/exams/1/questions", headers=token)
    assert "private" not in q.headers.get("Cache-Control", "")


# -- 8. login throttle ---------------------------------------------------------------

def test_login_is_throttled_per_address_and_client(app):
    """Issue 19: wrong passwords back off per address + client, never per address alone
    (tests/demo/test_security_accounts.py has the rest)."""
    wrong = {"email": "teacher@example.com", "password": "wrong password"}
    for i in range(10):
        app.post_json("/api/auth/login", wrong, status=401,
                      extra_environ={"REMOTE_ADDR": f"10.0.0.{i + 1}"})
    app.post_json("/api/auth/login", {**wrong, "password": "examcache-demo"}, status=200,
                  extra_environ={"REMOTE_ADDR": "10.0.1.1"})
    for _ in range(5):
        app.post_json("/api/auth/login", wrong, status=401, extra_environ={"REMOTE_ADDR": "10.0.2.1"})
    app.post_json("/api/auth/login", wrong, status=401, extra_environ={"REMOTE_ADDR": "10.0.2.1"})
    res = app.post_json("/api/auth/login", wrong, status=429,
                        extra_environ={"REMOTE_ADDR": "10.0.2.1"})
    assert res.content_type == "application/json" and res.json["status"] == 429
    assert 0 < int(res.headers["Retry-After"]) <= 60


def test_login_is_throttled_per_client_ip(app):
    env = {"REMOTE_ADDR": "192.0.2.7"}
    for i in range(10):
        app.post_json("/api/auth/login", {"email": f"u{i}@example.com", "password": "x"},
                      status=401, extra_environ=env)
    res = app.post_json("/api/auth/login", {"email": "teacher@example.com",
                                            "password": "examcache-demo"},
                        status=429, extra_environ=env)
    assert int(res.headers["Retry-After"]) > 0
    # another client still logs in
    app.post_json("/api/auth/login", {"email": "teacher@example.com",
                                      "password": "examcache-demo"},
                  status=200, extra_environ={"REMOTE_ADDR": "192.0.2.8"})


def test_the_login_throttle_is_shared_through_redis(settings, redis_url, redis_prefix):
    import redis

    first, second = make_testapp(settings), make_testapp(settings)  # two "processes"
    try:
        env = {"REMOTE_ADDR": "198.51.100.1"}
        for i in range(10):
            (first if i % 2 else second).post_json(
                "/api/auth/login", {"email": f"r{i}@example.com", "password": "x"},
                status=401, extra_environ=env)
        second.post_json("/api/auth/login", {"email": "r@example.com", "password": "x"},
                         status=429, extra_environ=env)
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=redis_prefix + "*throttle:login:ip*"))
        ttls = [client.ttl(k) for k in keys]
        client.close()
        assert keys and all(0 < t <= 60 for t in ttls), ttls  # fixed windows expire
    finally:
        close_testapp(first)
        close_testapp(second)


def test_the_login_throttle_works_in_memory_too(db):
    memory = make_testapp(base_settings(db.url.render_as_string(hide_password=False)))
    try:
        env = {"REMOTE_ADDR": "203.0.113.9"}
        for i in range(10):
            memory.post_json("/api/auth/login", {"email": f"m{i}@example.com", "password": "x"},
                             status=401, extra_environ=env)
        memory.post_json("/api/auth/login", {"email": "m@example.com", "password": "x"},
                         status=429, extra_environ=env)
    finally:
        close_testapp(memory)


# -- 9. resend-verification ------------------------------------------------------------

RESEND = "/api/auth/resend-verification"


def test_resend_answers_the_same_202_for_known_unknown_and_verified_addresses(app, mail):
    app.post_json("/api/auth/register", {"email": "k@example.com", "password": "long enough pw",
                                         "name": "K"}, status=201)
    mail.clear()
    known = app.post_json(RESEND, {"email": "k@example.com"}, status=202)
    unknown = app.post_json(RESEND, {"email": "nobody@example.com"}, status=202)
    verified = app.post_json(RESEND, {"email": "teacher@example.com"}, status=202)
    assert known.body == unknown.body == verified.body
    assert known.headers["Content-Type"] == unknown.headers["Content-Type"]
    # the same work for each (issue 19): a link for the unverified account, a fixed text
    # for the others
    assert [m.to for m in mail.outbox] == [["k@example.com"], ["nobody@example.com"],
                                           ["teacher@example.com"]]
    assert "/api/auth/verify?token=" in mail.outbox[0].text
    assert all("verify?token=" not in m.text for m in mail.outbox[1:])
    app.post_json(RESEND, {"email": "not an address"}, status=400)


def test_resend_is_throttled_to_one_mail_per_address_per_minute(app, mail):
    app.post_json("/api/auth/register", {"email": "t@example.com", "password": "long enough pw",
                                         "name": "T"}, status=201)
    mail.clear()
    first = app.post_json(RESEND, {"email": "t@example.com"}, status=202)
    for _ in range(3):
        assert app.post_json(RESEND, {"email": "T@Example.com"}, status=202).body == first.body
    assert len(mail.outbox) == 1


def test_resend_issues_a_fresh_token_and_the_old_link_stops_working(app, mail):
    app.post_json("/api/auth/register", {"email": "f@example.com", "password": "long enough pw",
                                         "name": "F"}, status=201)
    old = verification_link(mail.last)
    app.post_json(RESEND, {"email": "f@example.com"}, status=202)
    new = verification_link(mail.last)
    assert new != old
    assert new.startswith("/api/auth/verify?token=")
    app.get(old, status=400)
    assert app.get(new, status=200).json["user"]["verified"] is True
    login(app, "f@example.com", "long enough pw")


def test_an_address_the_mailer_refuses_is_400_on_register_and_a_silent_202_on_resend(
        app, mail, monkeypatch):
    from pyramid_examcache.mail.mailer import Mailer

    app.post_json("/api/auth/register", {"email": "r@example.com", "password": "long enough pw",
                                         "name": "R"}, status=201)
    old = verification_link(mail.last)

    def refuse(self, *args, **kwargs):
        raise ValueError("invalid address in to: refused on purpose")

    monkeypatch.setattr(Mailer, "send_queued", refuse)
    res = app.post_json("/api/auth/register", {"email": "x@example.com",
                                               "password": "long enough pw", "name": "X"},
                        status=400)
    assert "refused on purpose" in res.json["errors"]["email"]
    unknown = app.post_json(RESEND, {"email": "nobody@example.com"}, status=202)
    known = app.post_json(RESEND, {"email": "r@example.com"}, status=202)
    assert known.body == unknown.body
    monkeypatch.undo()
    app.get(old, status=200)  # nothing was sent, so the old link was kept
    app.post_json("/api/auth/login", {"email": "x@example.com", "password": "long enough pw"},
                  status=401)  # the refused registration was rolled back


def test_resend_survives_odd_bodies(app):
    for body in ({}, {"email": 1}, {"email": "a@b.c", "x": 1}, []):
        res = app.post_json(RESEND, body, expect_errors=True)
        assert res.status_int == 400 and res.json["message"]


def test_register_verified_helper_still_works_with_hardening(app, mail):
    token = register_verified(app, mail, "late@example.com")
    viewer = app.get("/api/exams/2", headers=bearer(token)).json["viewer"]
    assert viewer["email"] == "late@example.com"


def test_the_landing_page_answers_html_and_json(app):
    page = app.get("/", headers={"Accept": "text/html"}, status=200)
    assert page.content_type == "text/html" and "Vary" in page.headers
    assert "pyramid_examcache demo" in page.text and "/api/exams/{examId}/questions" in page.text
    assert re.search(r"curl -s -X POST https?://[^ ]+/api/auth/login -H", html.unescape(page.text))
    data = app.get("/", headers={"Accept": "application/json"}, status=200).json
    assert {r["path"] for r in data["api"]} >= {"/api/auth/register", "/api/exams/{examId}"}
    assert all(r["curl"].startswith("curl -s ") for r in data["api"])
    assert app.get("/", status=200).content_type == "text/html"  # no Accept: the page
    assert app.head("/", status=200).body == b""
    app.post("/", status=405)


def test_the_demo_serves_metrics_with_mail_jobs_from_the_outbox(settings):
    """examcache.metrics_path = /metrics (as in both .ini files): cache counters and the
    outbox's jobs by state; a registration's mail moves "completed" by one."""
    from prometheus_client.parser import text_string_to_metric_families

    from .conftest import close_testapp, make_testapp

    def completed(app) -> float:
        # from this host (demo.metrics_allow's default); others get 404 (test_security_deploy)
        res = app.get("/metrics", status=200, extra_environ={"REMOTE_ADDR": "127.0.0.1"})
        assert res.headers["Cache-Control"] == "no-store"
        samples = {(s.name, tuple(s.labels.items())): s.value
                   for f in text_string_to_metric_families(res.text) for s in f.samples}
        assert any(name == "examcache_cache_hits_total" for name, _ in samples)
        return samples[("examcache_mail_jobs", (("state", "completed"),))]

    app = make_testapp({**settings, "examcache.metrics_path": "/metrics"})
    try:
        before = completed(app)
        app.post_json("/api/auth/register", {"email": "metrics@example.com", "name": "M",
                                             "password": "correct horse battery"}, status=201)
        assert completed(app) == before + 1
    finally:
        close_testapp(app)


def test_the_landing_page_links_to_built_docs_metrics_and_admin(settings, tmp_path):
    from .conftest import close_testapp, make_testapp

    (tmp_path / "index.html").write_text("<html><body>the docs</body></html>")
    app = make_testapp({**settings, "demo.docs_dir": str(tmp_path),
                        "examcache.metrics_path": "/metrics"})
    try:
        links = {link["title"]: link["href"] for link in  # metrics: shown to this host only
                 app.get("/", headers={"Accept": "application/json"},
                         extra_environ={"REMOTE_ADDR": "127.0.0.1"}).json["links"]}
        assert links["Documentation"].endswith("/docs/")
        assert links["Prometheus metrics"].endswith("/metrics")
        assert "the docs" in app.get("/docs/index.html", status=200).text
    finally:
        close_testapp(app)
    bare = make_testapp({**settings, "demo.docs_dir": str(tmp_path / "not-built")})
    try:
        titles = [link["title"] for link in
                  bare.get("/", headers={"Accept": "application/json"}).json["links"]]
        assert "Documentation" not in titles
        bare.get("/docs/index.html", status=404)
    finally:
        close_testapp(bare)
