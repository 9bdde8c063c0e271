"""Early hits (``pyramid_examcache/cache/early.py``): a tween serves cached-view hits
before pyramid_tm and the router, exactly as the view deriver would, and never where
the ordinary path could answer differently.

Seen from a Pyramid user's side: the same app is built twice, with
``examcache.early_hits`` on (the default) and off, and the responses are compared
byte for byte over real HTTP (waitress); the negative cases check that the request
took the ordinary path (the ``early_hits`` counter, a test tween under pyramid_tm)
and got the ordinary answer.  memory:// mostly (its ``peek_local`` always can
answer); the tween is installed only where the backend can answer at all (a single
Redis with read leases, checked against the shared Redis)."""
from __future__ import annotations

import dataclasses
import email.utils
import functools
import logging
import os
import subprocess
import sys

import pytest
from pyramid.security import Allowed, Denied
from pyramid.config import Configurator
from pyramid.events import ContextFound, NewRequest, NewResponse
from pyramid.exceptions import ConfigurationError
from pyramid.httpexceptions import HTTPForbidden, HTTPNotFound
from pyramid.interfaces import ITweens
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.tweens import EXCVIEW
from webtest import TestApp

from pyramid_examcache.cache import get_policy
from pyramid_examcache.cache.backends import MemoryBackend, make_backend
from pyramid_examcache.cache.eligibility import off_reason
from pyramid_examcache.cache.early import TABLE_KEY, TWEEN
from pyramid_examcache.settings import parse_cache_settings
from pyramid_examcache.trace import ENVIRON_KEY, Trace

from ..mail.support import wait_until
from .servers import thread_server
from .test_http_cache import Loads as Counts, get

ADMIN = {"Authorization": "Bearer admin"}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TokenPolicy:
    """``Bearer admin`` holds every permission; nobody else holds any."""

    def identity(self, request):
        return "admin" if request.headers.get("Authorization") == "Bearer admin" else None

    def authenticated_userid(self, request):
        return self.identity(request)

    def permits(self, request, context, permission):
        if self.identity(request) == "admin":
            return Allowed("admin")
        return Denied("not admin")

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


def under_tm_tween_factory(handler, registry):
    """A test tween under pyramid_tm: counts the requests that entered pyramid_tm."""

    def under_tm_tween(request):
        assert request.environ.get("tm.active")
        registry["test.counts"]("under_tm")
        return handler(request)

    return under_tm_tween


def make_app(counts: Counts, *, subscribers: bool | str = True, **settings):
    """The test app (``subscribers``: both events, none, or ``"new_response"`` only)."""
    def item(request):
        n = counts("item")
        response = Response(f"item {request.matchdict['id']} page={request.GET.getall('page')} "
                            f"load={n}", content_type="text/plain")
        response.headers.update({"Vary": "Accept-Language", "X-Item": "yes"})
        return response

    def not_allowed(request):
        return Response("method not allowed", status=405)

    def http_cached(request):
        return Response(f"http load={counts('http')}", content_type="text/plain")

    def secret(request):
        return Response(f"secret load={counts('secret')}", content_type="text/plain")

    def negotiated_text(request):
        return Response(f"text load={counts('neg-text')}", content_type="text/plain")

    def negotiated_html(request):
        return Response("<p>html</p>", content_type="text/html")

    def varied(request):
        return Response(f"for {request.tenant} load={counts('vary')}",
                        content_type="text/plain")

    def by_language(request):
        return Response(f"in {request.headers.get('Accept-Language')} "
                        f"load={counts('language')}", content_type="text/plain")

    def shared(request):
        return Response(f"shared load={counts('shared')}", content_type="text/plain")

    def touch(request):
        request.cache.invalidate(f"item:{request.matchdict['id']}")
        return Response("ok")

    settings = {"examcache.redis_url": "memory://", "examcache.key_prefix": "early:",
                **settings}
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        config.set_security_policy(TokenPolicy())
        config.registry["test.counts"] = counts
        config.add_tween("tests.cache.test_early_hits.under_tm_tween_factory",
                         under="pyramid_tm.tm_tween_factory", over=EXCVIEW)
        config.add_exception_view(lambda exc, request: Response("undecodable", status=400),
                                  context=UnicodeDecodeError)
        config.add_route("item", "/items/{id}")
        # (the view sends Vary: Accept-Language: its key varies on it, a header name)
        config.add_view(item, route_name="item", request_method="GET", cache="item:{id}",
                        cache_public=True, cache_params=("page",),
                        cache_vary=("accept_language",))
        config.add_view(not_allowed, route_name="item")  # the demo's catch-all 405 view
        config.add_route("http", "/http/{id}")
        config.add_view(http_cached, route_name="http", cache="http:{id}", cache_public=True,
                        http_cache=(3600, {"public": True}))
        config.add_route("secret", "/secret/{id}")
        config.add_view(secret, route_name="secret", cache="secret:{id}", cache_public=True,
                        permission="read")
        config.add_route("negotiated", "/negotiated/{id}")
        config.add_view(negotiated_text, route_name="negotiated", request_method="GET",
                        cache="neg:{id}", cache_public=True)
        config.add_view(negotiated_html, route_name="negotiated", request_method="GET",
                        accept="text/html")
        config.add_route("varied", "/varied/{id}")
        config.add_request_method(lambda request: request.headers.get("X-Tenant"), "tenant",
                                  reify=True)
        config.add_view(varied, route_name="varied", cache="varied:{id}", cache_public=True,
                        cache_vary=("tenant",))
        config.add_route("language", "/language/{id}")
        config.add_view(by_language, route_name="language", cache="language:{id}",
                        cache_public=True, cache_vary=("accept_language",))
        config.add_route("shared", "/shared/{id}")  # not cache_public, in an app with security
        config.add_view(shared, route_name="shared", cache="shared:{id}")
        config.add_route("touch", "/touch/{id}")
        config.add_view(touch, route_name="touch", request_method="POST")
        if subscribers:
            def new_request(event):
                n = counts("new_request")
                if event.request.headers.get("X-Block"):
                    raise HTTPForbidden("blocked by a NewRequest subscriber")
                event.request.add_response_callback(
                    lambda request, response: response.headers.__setitem__(
                        "X-Callback", "called"))
                event.request.new_request_seen = n

            def new_response(event):
                route = getattr(event.request, "matched_route", None)
                event.response.headers["X-Route"] = (
                    f"{route.name if route else None} {event.request.matchdict}")
                # request.tm is reified: pyramid_tm's tween put it in the request's __dict__
                event.response.headers["X-TM"] = str("tm" in event.request.__dict__)

            if subscribers is True:
                config.add_subscriber(new_request, NewRequest)
            config.add_subscriber(new_response, NewResponse)
        return config.make_wsgi_app()


@pytest.fixture
def apps():
    """(early app, its counts, ordinary app, its counts)."""
    early_counts, plain_counts = Counts(), Counts()
    early = make_app(early_counts)
    plain = make_app(plain_counts, **{"examcache.early_hits": "false"})
    yield early, early_counts, plain, plain_counts
    get_policy(early.registry).close()
    get_policy(plain.registry).close()


def early_hits(app) -> int:
    return get_policy(app.registry).stats.snapshot()["early_hits"]


WIRE_NOISE = {"date", "server", "expires", "x-tm"}  # (Expires: compared separately;
#                                                       X-TM: the pyramid_tm probe)


def wire(response) -> tuple:
    status, headers, body = response
    return status, sorted((k, v) for k, v in headers.items() if k not in WIRE_NOISE), body


# -- served early, byte for byte the deriver's hit --------------------------------------

@pytest.mark.parametrize("method,path,headers", [
    ("GET", "/items/1", {}),
    ("HEAD", "/items/1", {}),
    ("GET", "/items/1?page=2", {}),
    ("GET", "/http/1", {}),
    ("HEAD", "/http/1", {}),
])
def test_an_early_hit_is_byte_identical_to_the_derivers_hit(apps, method, path, headers):
    early, early_counts, plain, plain_counts = apps
    with thread_server(early) as early_base, thread_server(plain) as plain_base:
        for base in (early_base, plain_base):
            assert get(base, path, headers)[1]["X-Cache"] == "MISS"
        before = early_hits(early)
        hit = get(early_base, path, headers, method)
        assert early_hits(early) == before + 1
        ordinary = get(plain_base, path, headers, method)
        assert early_hits(plain) == 0
        assert wire(hit) == wire(ordinary)
        assert hit[1]["X-Cache"] == "HIT" and "ETag" in hit[1]
        if path.startswith("/items"):
            assert hit[1]["Vary"] == "Accept-Language" and hit[1]["X-Item"] == "yes"
        assert hit[1]["X-Callback"] == "called"  # NewRequest's response callback ran
        if method == "HEAD":
            assert hit[2] == b"" and int(hit[1]["Content-Length"]) > 0
        if path.startswith("/http"):  # http_cache: fresh Cache-Control/Expires per response
            assert hit[1]["Cache-Control"] == "max-age=3600, public"
            assert email.utils.parsedate_to_datetime(hit[1]["Expires"]).timestamp() >= \
                email.utils.parsedate_to_datetime(ordinary[1]["Expires"]).timestamp() - 1
        # revalidation: 304 with no body, the same headers as the deriver's 304
        etag = {"If-None-Match": hit[1]["ETag"], **headers}
        not_modified = get(early_base, path, etag, method)
        assert early_hits(early) == before + 2
        assert not_modified[0] == 304 and not_modified[2] == b""
        assert wire(not_modified) == wire(get(plain_base, path, etag, method))
    stats = get_policy(early.registry).stats.snapshot()
    plain_stats = get_policy(plain.registry).stats.snapshot()
    for name in ("hits", "misses", "not_modified", "stores"):  # counted as the deriver counts
        assert stats[name] == plain_stats[name], name
    assert early_counts["under_tm"] == 1 and plain_counts["under_tm"] == 3


def test_pyramid_tm_is_entered_on_a_miss_only_and_events_run(apps):
    early, counts, _, _ = apps
    app = TestApp(early)
    miss = app.get("/items/7")
    assert miss.headers["X-Cache"] == "MISS" and counts["under_tm"] == 1
    assert miss.headers["X-TM"] == "True"
    assert counts["new_request"] == 1
    for n in range(2, 5):
        hit = app.get("/items/7")
        assert hit.headers["X-Cache"] == "HIT"
        assert counts["under_tm"] == 1  # pyramid_tm (and what is under it) not entered
        assert hit.headers["X-TM"] == "False"
        assert counts["new_request"] == n  # NewRequest: exactly once per request
        assert hit.headers["X-Callback"] == "called"
        # NewResponse ran, and saw the route and matchdict the router would have set
        assert hit.headers["X-Route"] == "item {'id': '7'}" == miss.headers["X-Route"]
    assert early_hits(early) == 3
    assert counts["item"] == 1


def test_a_new_request_subscriber_that_raises_gets_the_exception_view_as_usual(apps):
    early, _, plain, _ = apps
    for wsgi in (early, plain):
        app = TestApp(wsgi)
        app.get("/items/1")
        assert app.get("/items/1").headers["X-Cache"] == "HIT"
        blocked = app.get("/items/1", headers={"X-Block": "1"}, status=403)
        assert b"blocked by a NewRequest subscriber" in blocked.body
    assert early_hits(early) == 1 and early_hits(plain) == 0


# -- never served early where the ordinary path could answer differently ------------------

def test_a_view_with_a_permission_is_never_served_early(apps):
    """The most important negative case: an entry filled by an authorised caller is
    never served to a caller Pyramid's secured_view would refuse."""
    early, counts, _, _ = apps
    app = TestApp(early)
    assert app.get("/secret/1", headers=ADMIN).headers["X-Cache"] == "MISS"
    assert app.get("/secret/1", headers=ADMIN).headers["X-Cache"] == "HIT"
    app.get("/secret/1", status=403)  # anonymous: refused although the entry is cached
    assert early_hits(early) == 0 and counts["secret"] == 1
    assert "permission" in early.registry[TABLE_KEY].skipped["secret"]


def stamp(view):
    """A view decorator (``decorator=``): runs around the cached view on every request."""
    def stamped(context, request):
        response = view(context, request)
        response.headers["X-Stamped"] = "yes"
        return response
    return stamped


def stamp_wraps(view):
    """The same, written with ``functools.wraps`` (which copies the view's attributes)."""
    @functools.wraps(view)
    def stamped(context, request):
        response = view(context, request)
        response.headers["X-Stamped"] = "yes"
        return response
    return stamped


def stamping_deriver(view, info):
    """An add-on's view deriver placed above the cache deriver."""
    def stamped(context, request):
        response = view(context, request)
        response.headers["X-Deriver"] = "yes"
        return response
    return stamped


@pytest.mark.parametrize("how", ["decorator", "functools.wraps", "wrapper", "deriver"])
def test_views_wrapped_above_the_cache_are_not_served_early(how):
    """A ``decorator=``, a ``wrapper=`` view and another add-on's deriver above ours run
    on every ordinary hit; an early hit would skip them."""
    counts = Counts()
    options = {"decorator": dict(decorator=stamp), "functools.wraps": dict(decorator=stamp_wraps),
               "wrapper": dict(wrapper="outer"), "deriver": {}}[how]
    with Configurator(settings={"examcache.redis_url": "memory://"}) as config:
        config.include("pyramid_examcache")
        if how == "deriver":
            config.add_view_deriver(stamping_deriver, under="secured_view", over="owrapped_view")
        config.add_view(lambda context, request: Response(b"outer " + request.wrapped_body),
                        name="outer")
        config.add_route("item", "/items/{id}")
        config.add_view(lambda request: Response(f"load={counts('x')}"), route_name="item",
                        cache="item:{id}", cache_public=True, **options)
        wsgi = config.make_wsgi_app()
    assert "wraps the view above the cache" in wsgi.registry[TABLE_KEY].skipped["item"]
    app = TestApp(wsgi)
    responses = [app.get("/items/1") for _ in range(3)]
    last = responses[-1]
    assert counts["x"] == 1  # cached all along
    if how == "wrapper":  # (the wrapper view's own response: no X-Cache)
        assert last.body == b"outer load=1"
    else:
        assert last.headers["X-Deriver" if how == "deriver" else "X-Stamped"] == "yes"
    assert early_hits(wsgi) == 0
    get_policy(wsgi.registry).close()


class GoneFactory:
    """A route factory (the context of the route's views) that refuses some requests."""

    def __init__(self, request):
        if request.headers.get("X-Gone"):
            raise HTTPNotFound("gone")


@pytest.mark.parametrize("where", ["route", "root"])
def test_a_route_or_root_factory_keeps_views_out(where):
    """A factory runs on every ordinary hit and may raise: an early hit would skip it."""
    counts = Counts()
    with Configurator(settings={"examcache.redis_url": "memory://"}) as config:
        config.include("pyramid_examcache")
        if where == "root":
            config.set_root_factory(GoneFactory)
        config.add_route("item", "/items/{id}", factory=GoneFactory if where == "route" else None)
        config.add_view(lambda request: Response(f"load={counts('x')}"), route_name="item",
                        cache="item:{id}", cache_public=True)
        wsgi = config.make_wsgi_app()
    table = wsgi.registry[TABLE_KEY]
    assert "factory" in (table.skipped["item"] if where == "route" else table.disabled)
    app = TestApp(wsgi)
    assert [app.get("/items/1").headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    app.get("/items/1", headers={"X-Gone": "1"}, status=404)
    assert early_hits(wsgi) == 0
    get_policy(wsgi.registry).close()


@pytest.mark.parametrize("how", ["own", "default"])
def test_a_permission_keeps_a_view_out_even_without_a_security_policy(how):
    with Configurator(settings={"examcache.redis_url": "memory://"}) as config:
        config.include("pyramid_examcache")
        if how == "default":
            config.set_default_permission("view")
        config.add_route("item", "/items/{id}")
        config.add_view(lambda request: Response("x"), route_name="item", cache="item:{id}",
                        cache_public=True, permission="read" if how == "own" else None)
        config.add_route("open", "/open/{id}")
        config.add_view(lambda request: Response("x"), route_name="open", cache="open:{id}",
                        cache_public=True, permission=NO_PERMISSION_REQUIRED)
        wsgi = config.make_wsgi_app()
    table = wsgi.registry[TABLE_KEY]
    assert "permission" in table.skipped["item"] and "open" in table.routes
    get_policy(wsgi.registry).close()


def test_a_route_with_a_second_view_for_accept_is_not_served_early(apps):
    early, counts, _, _ = apps
    app = TestApp(early)
    text = {"Accept": "text/plain"}
    assert app.get("/negotiated/1", headers=text).headers["X-Cache"] == "MISS"
    assert app.get("/negotiated/1", headers=text).headers["X-Cache"] == "HIT"
    for accept in ({"Accept": "text/html"}, {}):  # (no Accept: Pyramid prefers the accept view)
        html = app.get("/negotiated/1", headers=accept)
        assert html.body == b"<p>html</p>" and "X-Cache" not in html.headers
    assert early_hits(early) == 0
    assert "accept" in early.registry[TABLE_KEY].skipped["negotiated"]


def test_a_view_with_cache_vary_is_not_served_early(apps):
    """A vary value that application code computes (a request method) needs the
    request the tween skips."""
    early, counts, _, _ = apps
    app = TestApp(early)
    tenant = {"X-Tenant": "acme"}
    for _ in range(2):
        app.get("/varied/1", headers=tenant)
    assert app.get("/varied/1", headers=tenant).headers["X-Cache"] == "HIT"
    assert early_hits(early) == 0 and counts["vary"] == 1
    assert early.registry[TABLE_KEY].skipped["varied"] == \
        "cache_vary needs application code (only request header names do not)"


def test_a_view_varying_on_a_request_header_is_served_early_per_header_value(apps):
    """A header name (read from the environ alone) keeps a route eligible; each
    language gets its own entry, early hits never mix them."""
    early, counts, _, _ = apps
    app = TestApp(early)
    assert "language" in early.registry[TABLE_KEY].routes
    for _ in range(3):
        for lang in ("de", "fr"):
            answer = app.get("/language/1", headers={"Accept-Language": lang})
            assert answer.text.startswith(f"in {lang} ")
            assert "Accept-Language" in answer.headers["Vary"]
    assert counts["language"] == 2
    assert early_hits(early) >= 4


def test_a_view_not_declared_public_is_not_served_early_in_an_app_with_security(apps):
    """The deriver asks the security policy whether such a request may fill (G5) on
    every request: an early hit would skip that call."""
    early, counts, _, _ = apps
    app = TestApp(early)
    assert [app.get("/shared/1").headers["X-Cache"] for _ in range(3)] == ["MISS", "HIT", "HIT"]
    assert early_hits(early) == 0 and counts["shared"] == 1
    assert "cache_public" in early.registry[TABLE_KEY].skipped["shared"]


def test_undeclared_query_parameters_and_post_fall_through(apps):
    early, counts, _, _ = apps
    app = TestApp(early)
    app.get("/items/1")
    bypassed = app.get("/items/1?other=1")
    assert bypassed.headers["X-Cache"] == "MISS" and counts["item"] == 2
    assert get_policy(early.registry).stats.snapshot()["param_bypasses"] == 1
    assert app.post("/items/1", status=405).body == b"method not allowed"
    assert early_hits(early) == 0 and counts["under_tm"] == 3


@pytest.mark.parametrize("path", ["/items/%ff", "/items/1?page=%ff", "/items/1?page=%C3%28"])
def test_odd_paths_and_queries_get_the_ordinary_answer(apps, path):
    early, _, plain, _ = apps
    answers = []
    for wsgi in (early, plain):
        app = TestApp(wsgi)
        app.get("/items/1")
        app.get("/items/1?page=x")
        response = app.get(path, expect_errors=True)  # (raised if excview did not handle it)
        answers.append((response.status, response.body))
    assert answers[0] == answers[1] == ("400 Bad Request", b"undecodable")
    assert early_hits(early) == 0


def test_a_traced_request_is_not_served_early(apps):
    early, counts, _, _ = apps
    app = TestApp(early)
    app.get("/items/1")
    trace = Trace()
    traced = app.get("/items/1", extra_environ={ENVIRON_KEY: trace})
    assert traced.headers["X-Cache"] == "HIT" and early_hits(early) == 0
    assert [op.outcome for op in trace.operations] == ["HIT"]  # the toolbar saw the hit


def test_the_debug_toolbar_sits_over_the_early_tween_and_sees_its_requests(tmp_path):
    counts = Counts()
    with Configurator(settings={"examcache.redis_url": "memory://",
                                "debugtoolbar.hosts": "0.0.0.0/0",
                                "debugtoolbar.intercept_exc": "false"}) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        config.include("pyramid_debugtoolbar")
        config.include("pyramid_examcache.debugtoolbar")
        config.add_route("item", "/items/{id}")
        config.add_view(lambda request: Response(f"load={counts('item')}"), route_name="item",
                        cache="item:{id}", cache_public=True)
        wsgi = config.make_wsgi_app()
    names = [name for name, _ in wsgi.registry.queryUtility(ITweens).implicit()]
    assert names.index("pyramid_debugtoolbar.toolbar_tween_factory") < names.index(TWEEN) \
        < names.index("pyramid_tm.tm_tween_factory")
    app = TestApp(wsgi, extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    assert [app.get("/items/1").headers["X-Cache"] for _ in range(3)] == ["MISS", "HIT", "HIT"]
    assert early_hits(wsgi) == 0 and counts["item"] == 1
    get_policy(wsgi.registry).close()


def test_pending_deferred_invalidations_are_never_skipped_early(apps):
    early, counts, _, _ = apps
    app = TestApp(early)
    app.get("/items/1")
    assert app.get("/items/1").headers["X-Cache"] == "HIT" and early_hits(early) == 1
    policy = get_policy(early.registry)
    policy.deferred.add(["item:1"], [])  # an invalidation this process still owes the store
    assert policy.peek_local("@view:item:1", ("@key:item:1",)) is None
    fresh = app.get("/items/1")  # the ordinary path applies it first: a fresh load
    assert fresh.headers["X-Cache"] == "MISS" and counts["item"] == 2
    assert early_hits(early) == 1 and not policy.deferred
    assert app.get("/items/1").headers["X-Cache"] == "HIT" and early_hits(early) == 2


def test_early_hits_false_installs_no_early_behaviour(apps):
    _, _, plain, counts = apps
    names = [name for name, _ in plain.registry.queryUtility(ITweens).implicit()]
    assert TWEEN not in names
    assert plain.registry[TABLE_KEY].disabled == "examcache.early_hits = false"
    app = TestApp(plain)
    assert [app.get("/items/1").headers["X-Cache"] for _ in range(3)] == ["MISS", "HIT", "HIT"]
    assert counts["under_tm"] == 3 and early_hits(plain) == 0


@pytest.mark.parametrize("settings,installed", [
    ({"examcache.near_cache": "lease"}, True),  # read leases: peek_local may answer
    ({}, True),  # one Redis's default (barrier): peek_after_barrier may answer
    ({"examcache.near_cache": "check"}, False),  # a round trip per read: never
])
def test_the_tween_is_installed_only_where_the_backend_can_answer_early(
        redis_url, redis_prefix, settings, installed):
    """Where the backend can never answer from this process (``check``) every early lookup
    would miss: no tween, so an eligible GET is routed once (by the router), not twice."""
    counts = Counts()
    with Configurator(settings={"examcache.redis_url": redis_url,
                                "examcache.key_prefix": redis_prefix, **settings}) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        config.add_route("item", "/items/{id}")
        config.add_view(lambda request: Response(f"load={counts('item')}"), route_name="item",
                        cache="item:{id}", cache_public=True)
        wsgi = config.make_wsgi_app()
    policy = get_policy(wsgi.registry)
    try:
        names = [name for name, _ in wsgi.registry.queryUtility(ITweens).implicit()]
        assert (TWEEN in names) is installed is (policy.early_peek() is not None)
        table = wsgi.registry[TABLE_KEY]
        if installed:
            assert table.disabled is None and "item" in table.routes
            assert names.index(TWEEN) < names.index("pyramid_tm.tm_tween_factory")
        else:  # (the settings may turn early_hits off for such a backend themselves)
            assert table.disabled and not table.routes
        app = TestApp(wsgi)
        assert [app.get("/items/1").headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]
        assert counts["item"] == 1
        if installed:  # (barrier: the held value, after a barrier, may need a moment: poll)
            wait_until(lambda: app.get("/items/1").headers["X-Cache"] == "HIT"
                       and early_hits(wsgi) > 0, timeout=10, message="an early hit")
            assert counts["item"] == 1
        else:
            assert early_hits(wsgi) == 0
    finally:
        policy.close()


def test_a_backend_that_cannot_answer_early_gets_no_tween_whatever_the_settings(
        redis_url, redis_prefix):
    settings = dataclasses.replace(
        parse_cache_settings({"examcache.redis_url": redis_url,
                              "examcache.key_prefix": redis_prefix,
                              "examcache.near_cache": "check"}), early_hits=True)
    backend = make_backend(settings)
    try:
        assert not backend.answers_locally() and not backend.answers_after_barrier()
        assert "from this process alone" in off_reason(settings, backend)
        assert off_reason(settings, MemoryBackend()) is None
    finally:
        backend.close()
    barrier = make_backend(dataclasses.replace(settings, near_cache="barrier", lease_ms=0))
    try:  # the default: early hits after the barrier
        assert barrier.answers_after_barrier() and not barrier.answers_locally()
        assert off_reason(settings, barrier) is None
    finally:
        barrier.close()


IMPORTS = """
import sys
from pyramid.config import Configurator
from pyramid.response import Response

def app(flag):
    settings = {"examcache.redis_url": "memory://", "examcache.early_hits": flag}
    with Configurator(settings=settings) as config:
        config.include("pyramid_examcache")
        config.add_route("item", "/items/{id}")
        config.add_view(lambda request: Response("x"), route_name="item", cache="item:{id}",
                        cache_public=True)
        return config.make_wsgi_app()

app("false")
print("pyramid_examcache.cache.early" in sys.modules)
app("true")
print("pyramid_examcache.cache.early" in sys.modules)
"""


def test_the_early_module_is_imported_only_when_the_tween_is_installed():
    """A change inside Pyramid that breaks the tween cannot break the start of an
    application that turned early hits off."""
    proc = subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "True"]


def test_an_invalidation_committed_by_a_write_is_seen_by_the_next_early_read(apps):
    """G2 on the early path: after a committed ``request.cache.invalidate`` the next
    read is never the old entry."""
    early, counts, _, _ = apps
    app = TestApp(early)
    assert app.get("/items/3").body.endswith(b"load=1")
    assert app.get("/items/3").body.endswith(b"load=1") and early_hits(early) == 1
    for n in range(2, 6):
        app.post("/touch/3")
        fresh = app.get("/items/3")
        assert fresh.body.endswith(f"load={n}".encode()) and fresh.headers["X-Cache"] == "MISS"
        again = app.get("/items/3")
        assert again.body == fresh.body and again.headers["X-Cache"] == "HIT"
    assert early_hits(early) == 5


def test_a_context_found_subscriber_turns_early_hits_off(caplog):
    """...and says so once, naming the event: the demo's ContextFound guard of /metrics
    once turned production.ini's early hits off without a word."""
    counts = Counts()
    caplog.set_level(logging.WARNING, logger="pyramid_examcache.cache.early")
    with Configurator(settings={"examcache.redis_url": "memory://"}) as config:
        config.include("pyramid_examcache")
        config.add_subscriber(lambda event: counts("context"), ContextFound)
        config.add_route("item", "/items/{id}")
        config.add_view(lambda request: Response("x"), route_name="item", cache="item:{id}")
        wsgi = config.make_wsgi_app()
    app = TestApp(wsgi)
    app.get("/items/1")
    app.get("/items/1")
    assert counts["context"] == 2 and early_hits(wsgi) == 0
    assert "ContextFound" in wsgi.registry[TABLE_KEY].disabled
    warned = [r.getMessage() for r in caplog.records if r.name == "pyramid_examcache.cache.early"]
    assert len(warned) == 1 and "early hits off" in warned[0] and "ContextFound" in warned[0]
    get_policy(wsgi.registry).close()


@pytest.mark.parametrize("raw", ["maybe", "2", "yes please"])
def test_a_bad_early_hits_value_is_a_configuration_error(raw):
    with pytest.raises(ConfigurationError, match="examcache.early_hits"):
        parse_cache_settings({"examcache.early_hits": raw})
    assert parse_cache_settings({}).early_hits is True
    assert parse_cache_settings({"examcache.early_hits": "off"}).early_hits is False
