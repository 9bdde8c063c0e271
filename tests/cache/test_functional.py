"""Through pyramid_tm, WebTest, real PostgreSQL and real Redis: G1, the ORM path,
dirty transactions, cached views (G5)."""
from __future__ import annotations

import pytest
import redis
from pyramid.config import Configurator
from pyramid.response import Response
from webtest import TestApp

from pyramid_examcache.cache import get_policy
from pyramid_examcache.cache.variants import origin_part

from . import itemapp


#: the origin part of the keys of WebTest's requests (Host: localhost:80)
ORIGIN = origin_part({"HTTP_HOST": "localhost:80", "wsgi.url_scheme": "http"})


@pytest.fixture
def db(cache_pg_url):
    itemapp.create_schema(cache_pg_url)
    return cache_pg_url


@pytest.fixture
def app(db, redis_url, redis_prefix):
    wsgi = itemapp.make_app(db, **{"examcache.redis_url": redis_url,
                                   "examcache.key_prefix": redis_prefix})
    yield TestApp(wsgi)
    wsgi.registry["test.engine"].dispose()
    get_policy(wsgi.registry).close()


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_miss_then_hit_serves_the_stored_bytes(app):
    first = app.get("/items/1")
    assert first.headers["X-Cache"] == "MISS"
    second = app.get("/items/1")
    assert second.headers["X-Cache"] == "HIT"
    assert second.body == first.body
    assert second.content_type == "application/json"


def test_an_update_that_commits_invalidates_through_the_orm(app):
    app.get("/items/1")
    assert app.get("/items/1").headers["X-Cache"] == "HIT"
    app.put("/items/1?v=7")
    fresh = app.get("/items/1")
    assert fresh.headers["X-Cache"] == "MISS"
    assert fresh.json["version"] == 7


def test_an_update_whose_transaction_aborts_leaves_the_cache_untouched(app, raw, redis_prefix):
    app.get("/items/1")
    before = raw.hgetall(f"{redis_prefix}v:@view:item:1{ORIGIN}")
    assert before
    with pytest.raises(RuntimeError, match="failing after the write, on purpose"):
        app.put("/items/1?v=9&fail=1")
    assert raw.hgetall(f"{redis_prefix}v:@view:item:1{ORIGIN}") == before
    cached = app.get("/items/1")
    assert cached.headers["X-Cache"] == "HIT" and cached.json["version"] == 0


def test_explicit_invalidate_commits_or_is_dropped(app, raw, redis_prefix):
    app.get("/items/2")
    with pytest.raises(RuntimeError, match="abort after invalidate, on purpose"):
        app.post("/invalidate/2?fail=1")
    # the view entry carries the implicit tag of its key; invalidating the key deletes it
    assert raw.exists(f"{redis_prefix}t:@key:item:2")
    assert app.get("/items/2").headers["X-Cache"] == "HIT"
    app.post("/invalidate/2")
    assert not raw.exists(f"{redis_prefix}t:@key:item:2")
    assert app.get("/items/2").headers["X-Cache"] == "MISS"


def test_orm_tags_invalidate_every_key_of_the_group(app, db):
    app.get("/items/1"), app.get("/items/2")
    # the GET view caches under tag group:0; an item update declares group:{grp}
    app.put("/items/3?v=1")
    assert app.get("/items/1").headers["X-Cache"] == "MISS"
    assert app.get("/items/2").headers["X-Cache"] == "MISS"


def test_write_then_read_in_one_transaction_sees_its_write_and_stores_nothing(app, raw, redis_prefix):
    body = app.post("/items/4/write-then-read?v=5").json
    assert body["version"] == 5
    assert not raw.exists(f"{redis_prefix}v:item:4:copy")
    assert app.get("/items/4").json["version"] == 5


def test_only_200s_without_cookies_for_anonymous_requests_are_stored(redis_url, redis_prefix, raw):
    calls = {"n": 0}

    def counted(body, status=200, cookie=False):
        def view(request):
            calls["n"] += 1
            resp = Response(body=body, status=status, content_type="text/plain")
            if cookie:
                resp.set_cookie("session", "secret")
            return resp
        return view

    with Configurator(settings={"examcache.redis_url": redis_url,
                                "examcache.key_prefix": redis_prefix}) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        for name, view in [("missing", counted(b"nope", 404)), ("cookie", counted(b"c", cookie=True)),
                           ("public", counted(b"pub")), ("mine", counted(b"mine"))]:
            config.add_route(name, f"/{name}/{{id}}")
        config.add_view(counted(b"nope", 404), route_name="missing", cache="missing:{id}")
        config.add_view(counted(b"c", cookie=True), route_name="cookie", cache="cookie:{id}")
        config.add_view(counted(b"pub"), route_name="public", cache="public:{id}")
        config.add_view(counted(b"mine"), route_name="mine", cache="mine:{id}",
                        cache_vary=("authorization",))
        wsgi = config.make_wsgi_app()
    app = TestApp(wsgi)
    app.get("/missing/1", status=404)
    app.get("/cookie/1")
    assert not raw.exists(f"{redis_prefix}v:@view:missing:1{ORIGIN}")
    assert not raw.exists(f"{redis_prefix}v:@view:cookie:1{ORIGIN}")
    app.get("/missing/1", status=404)
    app.get("/cookie/1")
    assert calls["n"] == 4  # neither was served from the cache the second time
    # an authenticated request under a key that does not vary by user: not stored
    app.get("/public/1", headers={"Authorization": "Bearer alice"})
    assert not raw.exists(f"{redis_prefix}v:@view:public:1{ORIGIN}")
    app.get("/public/1")
    assert raw.exists(f"{redis_prefix}v:@view:public:1{ORIGIN}")
    # varying by the Authorization header: one entry per user
    a = app.get("/mine/1", headers={"Authorization": "Bearer alice"})
    b = app.get("/mine/1", headers={"Authorization": "Bearer bob"})
    assert a.headers["X-Cache"] == b.headers["X-Cache"] == "MISS"
    assert app.get("/mine/1", headers={"Authorization": "Bearer bob"}).headers["X-Cache"] == "HIT"
    get_policy(wsgi.registry).close()


def test_the_decorator_caches_like_the_option(redis_url, redis_prefix):
    from pyramid_examcache.cache import cached

    calls = []

    @cached("deco:{id}", ttl=60)
    def view(request):
        calls.append(1)
        return Response(json_body={"id": request.matchdict["id"]})

    with Configurator(settings={"examcache.redis_url": redis_url,
                                "examcache.key_prefix": redis_prefix}) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        config.add_route("deco", "/deco/{id}")
        config.add_view(view, route_name="deco")
        wsgi = config.make_wsgi_app()
    app = TestApp(wsgi)
    assert app.get("/deco/1").headers["X-Cache"] == "MISS"
    hit = app.get("/deco/1")
    assert hit.headers["X-Cache"] == "HIT" and hit.json == {"id": "1"}
    assert len(calls) == 1
    get_policy(wsgi.registry).close()


def test_request_cache_stats_are_readable(app):
    app.get("/items/5"), app.get("/items/5")
    policy = get_policy(app.app.registry)
    stats = policy.stats.snapshot()
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["stores"] == 1


def test_the_orm_invalidating_a_key_drops_the_view_entry_stored_under_that_key(app, db):
    """The ORM's ``__cache_keys__`` names ``item:{id}``; the view's entry lives in the
    view namespace under that key.  Item 3 is moved to group 1 behind the cache's
    back, so the ORM's tag (``group:1``) is not the view's (``group:0``): only the
    key's implicit view tag can drop the entry."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db)
    with engine.begin() as conn:
        conn.execute(text("UPDATE cache_test_item SET grp = 1 WHERE id = 3"))
    engine.dispose()
    app.get("/items/3")
    assert app.get("/items/3").headers["X-Cache"] == "HIT"
    app.put("/items/3?v=11")
    fresh = app.get("/items/3")
    assert fresh.headers["X-Cache"] == "MISS" and fresh.json["version"] == 11
