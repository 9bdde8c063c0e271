"""What is stored is decided on the final response (G5): a CSRF token (every
storage policy), a cookie or header added after the view by a response callback
or a ``NewResponse`` subscriber, ``Vary: *``, ``Cache-Control: private`` -- never
stored, on the view option, ``@cached`` and routes the early-hit tween serves.
Through waitress and real Redis (and memory://), visitors alternating."""
from __future__ import annotations

import logging
import time
from http.cookies import SimpleCookie

import pytest
from pyramid.config import Configurator
from pyramid.csrf import CookieCSRFStoragePolicy, SessionCSRFStoragePolicy, get_csrf_token
from pyramid.events import NewResponse
from pyramid.response import Response
from pyramid.session import SignedCookieSessionFactory

from pyramid_examcache.cache import cached, get_policy
from pyramid_examcache.cache.backends.base import BYPASS_MS
from pyramid_examcache.cache.early import TABLE_KEY

from .servers import Client, thread_server

CSRF_POLICIES = {
    "cookie": lambda config: config.set_csrf_storage_policy(CookieCSRFStoragePolicy()),
    "session": lambda config: config.set_csrf_storage_policy(SessionCSRFStoragePolicy()),
    "legacy-session": lambda config: None,  # Pyramid's default: the session's own token
}


@pytest.fixture(params=["redis", "memory"])
def store(request, redis_url, redis_prefix):
    return (redis_url if request.param == "redis" else "memory://"), redis_prefix


def make_app(url: str, prefix: str, setup, **settings):
    with Configurator(settings={"examcache.redis_url": url, "examcache.key_prefix": prefix,
                                **settings}) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        config.set_session_factory(SignedCookieSessionFactory("s" * 32))
        setup(config)
        return config.make_wsgi_app()


def form(request):
    return Response(f"token={get_csrf_token(request)}", content_type="text/plain")


@cached("decorated:{id}", public=True)
def decorated_form(request):
    return Response(f"token={get_csrf_token(request)}", content_type="text/plain")


class Visitor:
    """A browser: one connection, its own cookie jar."""

    def __init__(self, base: str) -> None:
        self.client = Client(base)
        self.jar: dict[str, str] = {}

    def get(self, path: str):
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.jar.items())} \
            if self.jar else {}
        self.client.conn.request("GET", path, headers=headers)
        resp = self.client.conn.getresponse()
        body = resp.read()
        for value in resp.headers.get_all("Set-Cookie") or ():
            for name, morsel in SimpleCookie(value).items():
                self.jar[name] = morsel.value
        return resp.status, resp.headers, body

    def close(self) -> None:
        self.client.close()


@pytest.mark.parametrize("policy", sorted(CSRF_POLICIES))
@pytest.mark.parametrize("path", ["/form/1", "/decorated/1"])
def test_a_visitor_never_receives_another_visitors_csrf_token_or_cookie(redis_url, redis_prefix,
                                                                        policy, path):
    # (Redis only: the decision is the view's, the same on every backend -- the other tests
    # here run on memory:// too)
    url, prefix = redis_url, redis_prefix

    def setup(config):
        CSRF_POLICIES[policy](config)
        config.add_route("form", "/form/{id}")
        config.add_view(form, route_name="form", cache="form:{id}", cache_public=True)
        config.add_route("decorated", "/decorated/{id}")
        config.add_view(decorated_form, route_name="decorated")

    # read leases, so that the early-hit tween is in play too
    app = make_app(url, prefix, setup, **{"examcache.near_cache": "lease"})
    if path == "/form/1":  # a route the early-hit tween would serve: storing is what matters
        assert "form" in app.registry[TABLE_KEY].routes
    seen: dict[str, set[str]] = {"v1": set(), "v2": set()}
    with thread_server(app, threads=4) as base:
        visitors = {"v1": Visitor(base), "v2": Visitor(base)}
        # 400 requests or more: new visitors first, then returning ones (with their
        # cookie) for longer than a refused fill's bypass window (BYPASS_MS)
        rounds, until = 0, time.monotonic() + 3 * BYPASS_MS / 1000
        while rounds < 200 or time.monotonic() < until:
            rounds += 1
            for name, visitor in visitors.items():
                status, headers, body = visitor.get(path)
                assert status == 200
                assert headers["X-Cache"] == "MISS"
                seen[name].add(body.decode().split("=", 1)[1])
        for visitor in visitors.values():
            visitor.close()
    stats = get_policy(app.registry).stats.snapshot()
    get_policy(app.registry).close()
    assert seen["v1"].isdisjoint(seen["v2"]), "a CSRF token reached the other visitor"
    assert len(seen["v1"]) == len(seen["v2"]) == 1  # each keeps its own token
    assert stats["stores"] == 0


def _subscriber_app(url, prefix, subscriber, view=None):
    def page(request):
        return Response(f"page {request.matchdict['id']}", content_type="text/plain")

    def setup(config):
        config.add_subscriber(subscriber, NewResponse)
        config.add_route("page", "/page/{id}")
        config.add_view(view or page, route_name="page", cache="page:{id}", cache_public=True)

    return make_app(url, prefix, setup)


def _set_cookie(event):
    event.response.set_cookie("tracking", event.request.headers.get("X-Who", "nobody"))


def _vary_star(event):
    event.response.headers["Vary"] = "*"


def _private_for_some(event):
    if event.request.headers.get("X-Who") == "mallory":
        event.response.headers["Cache-Control"] = "private"


@pytest.mark.parametrize("subscriber,reason", [(_set_cookie, "set-cookie"),
                                               (_vary_star, "vary: *"),
                                               (_private_for_some, "private")])
def test_what_a_new_response_subscriber_adds_prevents_storing(store, subscriber, reason, caplog):
    url, prefix = store
    app = _subscriber_app(url, prefix, subscriber)
    with caplog.at_level(logging.WARNING, logger="pyramid_examcache"):
        with thread_server(app, threads=4) as base:
            client = Client(base)
            first = client.request("GET", "/page/1", {"X-Who": "mallory"})
            later = [client.request("GET", "/page/1", {"X-Who": "alice"}) for _ in range(3)]
            # (a refused fill makes others bypass for a moment, not wait: poll for a store)
            deadline = time.monotonic() + 10
            while subscriber is _private_for_some and later[-1][1]["X-Cache"] != "HIT" \
                    and time.monotonic() < deadline:
                later.append(client.request("GET", "/page/1", {"X-Who": "alice"}))
            client.close()
    stats = get_policy(app.registry).stats.snapshot()
    get_policy(app.registry).close()
    assert first[1]["X-Cache"] == "MISS"
    if subscriber is _private_for_some:  # only mallory's response was private
        assert later[-1][1]["X-Cache"] == "HIT"
        assert stats["stores"] == 1
    else:
        assert [r[1]["X-Cache"] for r in later] == ["MISS"] * 3
        assert stats["stores"] == 0
    warnings = [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]
    assert len(warnings) == 1 and reason in warnings[0], warnings


def test_a_header_every_response_gets_is_stored_once_and_not_doubled_on_hits(store):
    def frame_options(event):
        event.response.headers["X-Frame-Options"] = "DENY"

    url, prefix = store
    app = _subscriber_app(url, prefix, frame_options)
    with thread_server(app, threads=4) as base:
        client = Client(base)
        client.conn.request("GET", "/page/1")
        miss = client.conn.getresponse()
        miss.read()
        answers = []
        for _ in range(2):
            client.conn.request("GET", "/page/1")
            hit = client.conn.getresponse()
            hit.read()
            answers.append((hit.headers["X-Cache"], hit.headers.get_all("X-Frame-Options")))
        client.close()
    get_policy(app.registry).close()
    assert miss.headers.get_all("X-Frame-Options") == ["DENY"]
    assert answers == [("HIT", ["DENY"])] * 2


@pytest.mark.parametrize("what", ["cookie", "header"])
def test_a_response_callback_the_view_adds_prevents_storing(store, what):
    """A callback added while the view runs would not run on a hit: whatever it adds
    (a cookie, or only a header), the response is not stored."""
    def page(request):
        def callback(request, response):
            if what == "cookie":
                response.set_cookie("seen", "1")
            else:
                response.headers["X-Personal"] = "yes"
        request.add_response_callback(callback)
        return Response("page", content_type="text/plain")

    url, prefix = store
    app = _subscriber_app(url, prefix, lambda event: None, view=page)
    with thread_server(app, threads=4) as base:
        client = Client(base)
        answers = [client.request("GET", "/page/1") for _ in range(3)]
        client.close()
    stats = get_policy(app.registry).stats.snapshot()
    get_policy(app.registry).close()
    assert [a[1]["X-Cache"] for a in answers] == ["MISS"] * 3
    assert stats["stores"] == 0 and stats["uncacheable"] == 3


def test_a_vary_the_key_does_not_cover_is_not_stored(store, caplog):
    """A view that says its response depends on ``Accept-Language`` without
    ``cache_vary=("accept_language",)`` would serve one language to everyone."""
    def page(request):
        response = Response(f"in {request.headers.get('Accept-Language')}",
                            content_type="text/plain")
        response.headers["Vary"] = "Accept-Language"
        return response

    url, prefix = store
    app = _subscriber_app(url, prefix, lambda event: None, view=page)
    with caplog.at_level(logging.WARNING, logger="pyramid_examcache"):
        with thread_server(app, threads=4) as base:
            client = Client(base)
            answers = [client.request("GET", "/page/1", {"Accept-Language": lang})
                       for lang in ("de", "fr", "de", "fr")]
            client.close()
    get_policy(app.registry).close()
    assert [a[2] for a in answers] == [b"in de", b"in fr", b"in de", b"in fr"]
    assert {a[1]["X-Cache"] for a in answers} == {"MISS"}
    assert any("vary: accept-language (not in the key)" in r.getMessage()
               for r in caplog.records)


def test_private_is_allowed_under_the_callers_own_key_only(store, redis_url):
    """``Cache-Control: private`` (here from a subscriber, as the demo does) allows a private
    cache: an authenticated caller's per-user entry is stored; the anonymous entry a
    per-user view shares is not, when marked private."""
    from .test_per_user import USERS, BearerPolicy

    def page(request):
        who = request.identity.name if request.identity is not None else "anonymous"
        return Response(f"hello {who}", content_type="text/plain")

    def private(event):
        event.response.headers["Cache-Control"] = "private"

    url, prefix = store

    def setup(config):
        config.set_security_policy(BearerPolicy())
        config.add_subscriber(private, NewResponse)
        config.add_route("me", "/me")
        config.add_view(page, route_name="me", cache="me", cache_vary=("authenticated_userid",))

    app = make_app(url, prefix, setup)
    with thread_server(app, threads=4) as base:
        client = Client(base)
        users = [client.request("GET", "/me", {"Authorization": f"Bearer {user}"})
                 for _ in range(2) for user in USERS]
        anonymous = [client.request("GET", "/me") for _ in range(3)]
        client.close()
    get_policy(app.registry).close()
    assert [u[1]["X-Cache"] for u in users] == ["MISS", "MISS", "HIT", "HIT"]
    assert [u[2] for u in users] == [b"hello alice", b"hello bob"] * 2
    assert {a[1]["X-Cache"] for a in anonymous} == {"MISS"}
