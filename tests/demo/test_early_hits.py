"""Early hits in the demo (``pyramid_examcache/cache/early.py``): the questions list is
served by the early-hit tween, byte for byte what the view deriver serves."""
from __future__ import annotations

from pyramid_examcache.cache import get_policy
from pyramid_examcache.cache.early import TABLE_KEY

from .conftest import base_settings, close_testapp, make_testapp


def early_hits(app) -> int:
    return get_policy(app.registry).stats.snapshot()["early_hits"]


def test_the_demo_serves_its_questions_list_early(db, redis_prefix):
    """The demo's exam questions route (public, no permission, no vary) is eligible; its
    NewResponse subscriber (``headers.py``, reads ``request.matched_route``) still runs;
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
            assert "no-store" in login.headers["Cache-Control"]  # the subscriber's work
            exam = [app.get("/api/exams/1") for _ in range(2)]
            assert exam[1].headers["X-Cache"] == "HIT"
            assert "Authorization" in exam[1].headers["Vary"]  # per-user route: subscriber
            responses[flag] = (seen[-1].status, sorted(seen[-1].headerlist), seen[-1].body)
            assert early_hits(app.app) == (2 if flag == "true" else 0)
        finally:
            close_testapp(app)
    assert responses["true"] == responses["false"]
