"""The WSGI fast path (``pyramid_examcache.fast_path``, ``cache/front.py``): early hits
served before Pyramid builds a request, byte for byte the router's answer.

From a Pyramid user's side: the same app (tests/cache/test_early_hits.py's) is built
with the fast path in front and without early hits, and the answers are compared over
real HTTP (waitress); the requests it must not serve are shown to reach the router
(the ``early_hits`` counter, pyramid_tm's tween); the mistakes it must refuse are
ConfigurationErrors naming why; a Paste pipeline installs it from an .ini.  G2 through
the fast path across processes is in tests/cache/test_concurrency.py (the "fast"
variant)."""
from __future__ import annotations

import logging
import textwrap

import pytest
from pyramid.config import Configurator
from pyramid.events import NewRequest
from pyramid.exceptions import ConfigurationError
from pyramid.paster import get_app
from pyramid.response import Response
from pyramid.tweens import INGRESS

from pyramid_examcache import fast_path
from pyramid_examcache.cache import get_policy
from pyramid_examcache.cache import front
from pyramid_examcache.cache.front import PLAN_KEY, FastPath, filter_app_factory

from ..mail.support import wait_until
from .servers import thread_server
from .test_early_hits import Counts, early_hits, make_app, wire
from .test_http_cache import get

REQUESTS = [
    ("GET", "/items/1", {}),
    ("HEAD", "/items/1", {}),
    ("GET", "/items/1?page=2", {}),
    ("GET", "/items/1", {"Accept-Language": "fr"}),
    ("GET", "/language/1", {"Accept-Language": "de"}),
    ("GET", "/http/1", {}),  # http_cache: a real request, fresh Expires
    ("HEAD", "/http/1", {}),
]


@pytest.fixture(params=["plain", "new_response"])
def pair(request):
    """(fast app, its counts, ordinary app, its counts); ``new_response``: the app
    subscribes to NewResponse, so every fast hit builds a request and runs it."""
    subscribers = request.param if request.param == "new_response" else False
    fast_counts, plain_counts = Counts(), Counts()
    fast = fast_path(make_app(fast_counts, subscribers=subscribers))
    plain = make_app(plain_counts, subscribers=subscribers, **{"examcache.early_hits": "false"})
    yield fast, fast_counts, plain, plain_counts, request.param
    get_policy(fast.registry).close()
    get_policy(plain.registry).close()


def test_fast_hits_are_byte_identical_to_the_routers(pair):
    fast, fast_counts, plain, plain_counts, kind = pair
    assert isinstance(fast, FastPath)
    with thread_server(fast) as fast_base, thread_server(plain) as plain_base:
        for method, path, headers in REQUESTS:
            for base in (fast_base, plain_base):  # the misses fill both
                get(base, path, headers)
            before = early_hits(fast)
            hit = get(fast_base, path, headers, method)
            assert early_hits(fast) == before + 1, (method, path)
            ordinary = get(plain_base, path, headers, method)
            assert wire(hit) == wire(ordinary), (method, path, headers)
            assert hit[1]["X-Cache"] == "HIT"
            if kind == "new_response":  # the subscriber ran, with the route matched
                assert hit[1]["X-Route"].startswith(path.split("/")[1].rstrip("s"))
            if method == "HEAD":
                assert hit[2] == b"" and int(hit[1]["Content-Length"]) > 0
            for tag in (hit[1]["ETag"], f'W/{hit[1]["ETag"]}', "*", f'"x", {hit[1]["ETag"]}',
                        'malformed"'):
                etag = {"If-None-Match": tag, **headers}
                revalidated = get(fast_base, path, etag, method)
                assert wire(revalidated) == wire(get(plain_base, path, etag, method)), tag
    stats = get_policy(fast.registry).stats.snapshot()
    plain_stats = get_policy(plain.registry).stats.snapshot()
    for name in ("hits", "misses", "not_modified", "stores"):
        assert stats[name] == plain_stats[name], name
    # pyramid_tm was entered by the misses only
    assert fast_counts["under_tm"] == len(REQUESTS) - 2  # (HEAD /items/1, /http/1: filled)


@pytest.mark.parametrize("method,path,headers,why", [
    ("GET", "/varied/1", {"X-Tenant": "a"}, "application code"),
    ("GET", "/secret/1", {"Authorization": "Bearer admin"}, None),  # a permission
    ("GET", "/shared/1", {}, None),  # not cache_public in an app with security
    ("GET", "/items/1?other=1", {}, None),  # an undeclared parameter
    ("POST", "/items/1", {}, None),
    ("GET", "/items/%ff", {}, None),
    ("GET", "/nowhere", {}, None),
])
def test_what_the_fast_path_does_not_serve_reaches_the_router(pair, method, path, headers, why):
    fast, fast_counts, plain, plain_counts, _ = pair
    plan = fast.registry[PLAN_KEY]
    if why is not None:
        assert why in plan.skipped[path.split("/")[1]]
    with thread_server(fast) as fast_base, thread_server(plain) as plain_base:
        for _ in range(2):
            before = early_hits(fast)
            answer = get(fast_base, path, headers, method)
            assert early_hits(fast) == before
            assert wire(answer) == wire(get(plain_base, path, headers, method))


class Users:
    """``Bearer <name>`` is user <name>."""

    def identity(self, request):
        auth = request.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def authenticated_userid(self, request):
        return self.identity(request)

    def permits(self, request, context, permission):
        return True


def per_user_app(**settings):
    with Configurator(settings={"examcache.redis_url": "memory://",
                                "examcache.key_prefix": "front-users:", **settings}) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        config.set_security_policy(Users())
        config.add_route("mine", "/mine")
        config.add_view(lambda request: Response(f"for {request.authenticated_userid}"),
                        route_name="mine", cache="mine", cache_vary=("authenticated_userid",))
        config.add_route("auth", "/auth")
        config.add_view(lambda request: Response(f"auth {request.authenticated_userid}"),
                        route_name="auth", cache="auth", cache_vary=("authorization",))
        config.add_route("open", "/open")
        config.add_view(lambda request: Response("open"), route_name="open", cache="open",
                        cache_public=True)
        return config.make_wsgi_app()


def test_two_users_alternating_never_see_each_others_answer():
    app = fast_path(per_user_app())
    plan = app.registry[PLAN_KEY]
    assert set(plan.routes) == {"open"}
    assert plan.skipped["mine"] == "cache_vary needs the identity"
    assert plan.skipped["auth"] == "cache_vary needs the identity"
    with thread_server(app) as base:
        for _ in range(10):
            for user in ("alice", "bob"):
                for path in ("/mine", "/auth"):
                    status, headers, body = get(base, path, {"Authorization": f"Bearer {user}"})
                    assert status == 200 and body.decode().endswith(user), (path, user, body)
        assert get(base, "/open")[1]["X-Cache"] == "MISS"
        assert get(base, "/open")[1]["X-Cache"] == "HIT"
    assert early_hits(app) == 1  # /open only: the per-user routes went to the router
    get_policy(app.registry).close()


def under_ingress_tween_factory(handler, registry):
    return handler


def test_mistakes_in_the_application_are_configuration_errors():
    with pytest.raises(ConfigurationError, match="NewRequest"):
        fast_path(make_app(Counts()))  # (it subscribes to NewRequest)
    with Configurator(settings={"examcache.redis_url": "memory://"}) as config:
        config.include("pyramid_examcache")
        config.add_tween("tests.cache.test_fast_path.under_ingress_tween_factory",
                         under=INGRESS)
        config.add_route("open", "/open")
        config.add_view(lambda request: Response("open"), route_name="open", cache="open")
        router = config.make_wsgi_app()
    with pytest.raises(ConfigurationError, match="under_ingress_tween_factory"):
        fast_path(router)
    with Configurator(settings={"examcache.redis_url": "memory://"}) as config:
        config.include("pyramid_examcache")
        config.add_route("mine", "/mine")
        config.add_view(lambda request: Response("x"), route_name="mine", cache="mine",
                        cache_vary=("user_agent", "authenticated_userid"))
        router = config.make_wsgi_app()
    with pytest.raises(ConfigurationError, match="WSGI environ alone"):
        fast_path(router)
    with pytest.raises(ConfigurationError, match="wraps a Pyramid router"):
        fast_path(lambda environ, start_response: [])
    with pytest.raises(ConfigurationError, match="takes no options, got threads"):
        filter_app_factory(router, {}, threads="4")


@pytest.mark.parametrize("settings,reason", [
    ({"examcache.enabled": "false"}, "examcache.enabled = false"),
    ({"examcache.early_hits": "false"}, "examcache.early_hits = false"),
])
def test_settings_that_keep_it_off_give_back_the_router_with_one_warning(
        caplog, settings, reason):
    router = make_app(Counts(), subscribers=False, **settings)
    with caplog.at_level(logging.WARNING, logger="pyramid_examcache.cache.front"):
        assert fast_path(router) is router
    assert [r.getMessage() for r in caplog.records] == [
        f"pyramid_examcache fast path off: {reason}"]
    get_policy(router.registry).close()


def test_on_one_redis_with_check_it_says_which_setting_turns_it_on(
        caplog, redis_url, redis_prefix):
    router = make_app(Counts(), subscribers=False, **{"examcache.redis_url": redis_url,
                                                      "examcache.key_prefix": redis_prefix,
                                                      "examcache.near_cache": "check"})
    with caplog.at_level(logging.WARNING, logger="pyramid_examcache.cache.front"):
        assert fast_path(router) is router
    assert "examcache.near_cache = barrier or lease" in caplog.text
    get_policy(router.registry).close()


def test_on_one_redis_by_default_it_serves_held_values_after_the_barrier(
        redis_url, redis_prefix):
    """The default near cache (``barrier``): the fast path serves what the near cache holds
    once the barrier returned (``peek_after_barrier``), and a write by another process
    is seen by the next fast read."""
    counts = Counts()
    router = make_app(counts, subscribers=False, **{"examcache.redis_url": redis_url,
                                                    "examcache.key_prefix": redis_prefix})
    app = fast_path(router)
    other = make_app(Counts(), subscribers=False, **{"examcache.redis_url": redis_url,
                                                     "examcache.key_prefix": redis_prefix,
                                                     "examcache.near_cache": "off"})
    try:
        assert isinstance(app, FastPath) and app.peek == get_policy(router.registry
                                                                    ).peek_after_barrier
        with thread_server(app) as base:
            assert get(base, "/items/1")[1]["X-Cache"] == "MISS"
            wait_until(lambda: get(base, "/items/1")[1]["X-Cache"] == "HIT"
                       and early_hits(app) > 0, timeout=10, message="a fast hit")
            assert counts["item"] == 1
            assert get(base, "/items/1")[1]["X-Cache"] == "HIT"
            with thread_server(other) as other_base:  # a write, by another application
                assert get(other_base, "/touch/1", method="POST")[0] == 200
            assert get(base, "/items/1")[1]["X-Cache"] == "MISS" and counts["item"] == 2
    finally:
        get_policy(router.registry).close()
        get_policy(other.registry).close()


def test_a_paste_pipeline_installs_it(tmp_path):
    ini = tmp_path / "app.ini"
    ini.write_text(textwrap.dedent("""\
        [pipeline:main]
        pipeline = examcache app

        [filter:examcache]
        use = egg:pyramid_examcache#fast_path

        [app:app]
        use = call:tests.cache.test_fast_path:paste_app
        examcache.redis_url = memory://
        """))
    app = get_app(str(ini), "main")
    assert isinstance(app, FastPath)
    with thread_server(app) as base:
        assert get(base, "/items/1")[1]["X-Cache"] == "MISS"
        assert get(base, "/items/1")[1]["X-Cache"] == "HIT"
    assert early_hits(app) == 1
    get_policy(app.registry).close()


def paste_app(global_config, **settings):
    return make_app(Counts(), subscribers=False, **settings)


def test_a_new_request_subscriber_added_later_is_refused_too():
    """(NewRequest subscribers may add response callbacks a fast hit could not run.)"""
    with Configurator(settings={"examcache.redis_url": "memory://"}) as config:
        config.include("pyramid_examcache")
        config.add_subscriber(lambda event: None, NewRequest)
        config.add_route("open", "/open")
        config.add_view(lambda request: Response("open"), route_name="open", cache="open")
        router = config.make_wsgi_app()
    with pytest.raises(ConfigurationError, match="NewRequest"):
        fast_path(router)


def test_a_flood_of_distinct_paths_keeps_the_matched_paths_bounded(monkeypatch):
    """The fast path remembers the paths it matched to a fast route (no regex loop on the
    next hit); a client sending ever new ids cannot grow that memory past its bound, and
    every answer stays the router's."""
    monkeypatch.setattr(front, "MATCHED_PATHS", 50)
    counts = Counts()
    app = fast_path(make_app(counts, subscribers=False))
    plain = make_app(Counts(), subscribers=False, **{"examcache.early_hits": "false"})
    with thread_server(app) as base, thread_server(plain) as plain_base:
        for n in range(1, 121):
            get(base, f"/items/{n}")  # the miss fills
            get(plain_base, f"/items/{n}")
            hit = get(base, f"/items/{n}")
            assert hit[1]["X-Cache"] == "HIT" and wire(hit) == wire(get(plain_base, f"/items/{n}"))
            assert 1 <= len(app._matched) <= 50
        assert early_hits(app) == 120
        assert get(base, "/items/7", method="HEAD")[2] == b""  # a remembered path, another method
    get_policy(app.registry).close()
    get_policy(plain.registry).close()


def test_a_fast_hit_after_a_refill_serves_the_new_value():
    """An invalidation committed by a write is seen by the next fast read; and the fast path
    remembers the reply (head parsed, body sliced) of the entry it served under a key: a new
    value stored under that key is served, never the remembered one."""
    counts = Counts()
    app = fast_path(make_app(counts, subscribers=False))
    with thread_server(app) as base:
        for n in range(1, 4):
            first = get(base, "/items/1")
            assert first[1]["X-Cache"] == "MISS" and f"load={n}".encode() in first[2]
            before = early_hits(app)
            hit = get(base, "/items/1")
            assert early_hits(app) == before + 1
            assert hit[1]["X-Cache"] == "HIT" and hit[2] == first[2]
            assert hit[1]["Content-Length"] == str(len(first[2]))
            assert get(base, "/touch/1", method="POST")[0] == 200
    assert early_hits(app) == 3
    get_policy(app.registry).close()


def test_the_remembered_replies_stay_within_their_bound(monkeypatch):
    """A client reading ever more entries cannot grow the remembered replies past
    ``REPLY_BYTES``; every answer stays the router's."""
    counts = Counts()
    app = fast_path(make_app(counts, subscribers=False))
    plain = make_app(Counts(), subscribers=False, **{"examcache.early_hits": "false"})
    with thread_server(app) as base, thread_server(plain) as plain_base:
        get(base, "/items/1")
        get(plain_base, "/items/1")  # (the loads counted alike on both)
        assert get(base, "/items/1")[1]["X-Cache"] == "HIT"
        one = app._reply_bytes
        assert one > 0
        monkeypatch.setattr(front, "REPLY_BYTES", 3 * one)
        for n in range(2, 12):
            get(base, f"/items/{n}")
            get(plain_base, f"/items/{n}")
            hit = get(base, f"/items/{n}")
            assert hit[1]["X-Cache"] == "HIT" and wire(hit) == wire(get(plain_base, f"/items/{n}"))
            assert 0 < app._reply_bytes <= 3 * one and 1 <= len(app._replies) <= 3
    get_policy(app.registry).close()
    get_policy(plain.registry).close()


#: every vary name that keeps a route on the fast path, and the header it reads
HEADER_VARIES = {"cookies": "Cookie", "accept": "Accept", "accept_language": "Accept-Language",
                 "accept_encoding": "Accept-Encoding", "user_agent": "User-Agent",
                 "host": "Host"}


@pytest.mark.parametrize("name", sorted(HEADER_VARIES))
def test_two_clients_alternating_on_a_header_vary_each_get_their_own_fast_hits(name):
    """The fast path remembers the key of a request signature and the reply of a key: two
    clients that differ only in the header a route varies on, alternating, each get the
    body rendered for their own header, from fast hits -- never the other's."""
    header = HEADER_VARIES[name]

    def echo(request):
        return Response(f"for {request.headers.get(header)}", content_type="text/plain")

    settings = {"examcache.redis_url": "memory://", "examcache.key_prefix": "fv:"}
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        config.add_route("echo", "/echo/{id}")
        config.add_view(echo, route_name="echo", cache="echo:{id}", cache_vary=(name,))
        app = fast_path(config.make_wsgi_app())
    assert "echo" in app.registry[PLAN_KEY].routes, app.registry[PLAN_KEY].skipped
    values = ("alice.example", "bob.example") if name == "host" else ("alice", "bob")
    try:
        with thread_server(app) as base:
            for value in values:  # the misses store one entry per value
                assert get(base, "/echo/1", {header: value})[1]["X-Cache"] == "MISS"
            before = early_hits(app)
            for _ in range(5):
                for value in values:
                    status, headers, body = get(base, "/echo/1", {header: value})
                    assert (status, headers["X-Cache"]) == (200, "HIT")
                    assert body == f"for {value}".encode(), (value, body)
            assert early_hits(app) == before + 10
    finally:
        get_policy(app.registry).close()
