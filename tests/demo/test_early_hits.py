"""Early hits in the demo (``pyramid_examcache/cache/early.py``): the questions list is
served by the early-hit tween, byte for byte what the view deriver serves."""
from __future__ import annotations

import logging

import pytest
from webtest import TestApp

import demo_app
from pyramid_examcache.cache import get_policy
from pyramid_examcache.cache.early import TABLE_KEY
from pyramid_examcache.cache.front import PLAN_KEY

from ..polling import wait_until
from .conftest import base_settings, close_testapp, make_testapp


def early_hits(app) -> int:
    return get_policy(app.registry).stats.snapshot()["early_hits"]


def test_the_demo_serves_its_questions_list_early(db, redis_prefix):
    """The demo's exam questions route (public, no permission, no vary) is eligible; its
    headers tween (``headers.py``, reads ``request.matched_route``) still runs;
    the per-user exam view (``cache_vary``) is not served early."""
    url = db.url.render_as_string(hide_password=False)
    responses = {}
    for flag in ("true", "false"):
        app = make_testapp(base_settings(url, **{"examcache.key_prefix": redis_prefix,
                                                 "examcache.early_hits": flag}))
        try:
            table = app.app.registry[TABLE_KEY]
            if flag == "true":
                assert "exam_questions" in table.routes
                assert table.skipped["exam"] == "cache_vary needs the identity"
            seen = [app.get("/api/exams/1/questions") for _ in range(3)]
            assert [r.headers["X-Cache"] for r in seen] == ["MISS", "HIT", "HIT"]
            login = app.post_json("/api/auth/login", {"email": "teacher@example.com",
                                                      "password": "examcache-demo"})
            assert "no-store" in login.headers["Cache-Control"]  # the headers tween's work
            exam = [app.get("/api/exams/1") for _ in range(2)]
            assert exam[1].headers["X-Cache"] == "HIT"
            assert "Authorization" in exam[1].headers["Vary"]  # per-user route: the tween
            responses[flag] = (seen[-1].status, sorted(seen[-1].headerlist), seen[-1].body)
            assert early_hits(app.app) == (2 if flag == "true" else 0)
        finally:
            close_testapp(app)
    assert responses["true"] == responses["false"]


@pytest.mark.parametrize("backend", ["memory", "redis-lease", "redis-barrier"])
def test_main_serves_the_questions_hits_before_pyramid_builds_a_request(
        db, redis_url, redis_prefix, backend, caplog):
    """``demo_app.main`` (what pserve runs) wraps the router in the add-on's WSGI fast
    path when early hits are on, as with production.ini's ``near_cache = lease`` and
    ``metrics_path``: the questions' hits are served from the environ (no request, no
    subscriber), byte for byte what the router serves; the /metrics guard, the body
    limit and the per-user headers (tweens under the early-hit tween) still apply.
    ``redis-barrier``: the default near cache, its hits served after the barrier."""
    extra = {"examcache.key_prefix": redis_prefix, "examcache.metrics_path": "/metrics"}
    if backend.startswith("redis"):
        extra.update({"examcache.redis_url": redis_url,
                      "examcache.near_cache": backend.removeprefix("redis-")})
    settings = base_settings(db.url.render_as_string(hide_password=False), **extra)
    caplog.set_level(logging.WARNING)
    fast = TestApp(demo_app.main({}, **settings))
    plain = make_testapp(dict(settings, **{"examcache.key_prefix": redis_prefix + "plain:"}))
    try:
        plan = fast.app.registry[PLAN_KEY]
        assert plan.disabled is None, plan.disabled
        assert {name: r.full for name, r in plan.routes.items()} == {"exam_questions": False}
        seen = {}
        for name, app in (("fast", fast), ("plain", plain)):
            assert app.get("/api/exams/1/questions").headers["X-Cache"] == "MISS", name
            # on Redis the near cache holds the value once tracking confirms the fill
            # (asynchronously): read until a hit is served locally, then once more
            wait_until(lambda app=app: app.get("/api/exams/1/questions").headers["X-Cache"]
                       == "HIT" and early_hits(app.app) >= 1, timeout=10)
            before = early_hits(app.app)
            last = app.get("/api/exams/1/questions")
            assert last.headers["X-Cache"] == "HIT" and early_hits(app.app) == before + 1
            seen[name] = (last.status, sorted(last.headerlist), last.body)
        assert seen["fast"] == seen["plain"]
        outsider = {"REMOTE_ADDR": "203.0.113.9"}
        hidden = fast.get("/metrics", extra_environ=outsider, status=404).body
        assert hidden == fast.get("/nometrics", extra_environ=outsider, status=404).body \
            .replace(b"/nometrics", b"/metrics")  # as if the path did not exist
        assert b"examcache_" in fast.get("/metrics", extra_environ={"REMOTE_ADDR": "127.0.0.1"}).body
        fast.post("/api/auth/register", b"x" * (2 << 20),
                  headers={"Content-Type": "application/json"}, status=413)
        login = fast.post_json("/api/auth/login", {"email": "teacher@example.com",
                                                   "password": "examcache-demo"})
        assert "no-store" in login.headers["Cache-Control"]
        assert "Authorization" in fast.get("/api/exams/1").headers["Vary"]
        off = [r.getMessage() for r in caplog.records if "off:" in r.getMessage()]
        assert off == []  # neither "early hits off" nor "fast path off"
    finally:
        close_testapp(fast)
        close_testapp(plain)
