"""No documented option leaks one caller's response to another (G5).

Two users alternate on every cached path, through waitress and real Redis (and
memory://): every documented ``cache_vary`` name, an identity object with no
``__str__`` (a new instance per request, like an ORM user), a per-user name the
request lacks, a value that is not an identifier, a forged ``Host``, views that
differ by ``accept=``.  A response names its caller; a response naming the
other user is a leak."""
from __future__ import annotations

import logging

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.response import Response

from pyramid_examcache.cache import get_policy

from .servers import Client, thread_server

USERS = ("alice", "bob")
ROUNDS = 200  # x 2 users = 400 requests per case


class User:
    """An ORM-like identity: no ``__str__``, a new instance per request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.id = USERS.index(name) + 1


class BearerPolicy:
    """``Authorization: Bearer <name>`` -> an identity object; userid = its id."""

    def identity(self, request):
        auth = request.headers.get("Authorization", "")
        name = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        return User(name) if name in USERS else None

    def authenticated_userid(self, request):
        identity = request.identity
        return None if identity is None else identity.id

    def permits(self, request, context, permission):
        return True

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


def whoami(request) -> Response:
    who = request.identity.name if request.identity is not None else "anonymous"
    return Response(f"hello {who}", content_type="text/plain")


def make_app(url: str, prefix: str, setup=None, **settings):
    with Configurator(settings={"examcache.redis_url": url, "examcache.key_prefix": prefix,
                                **settings}) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        config.set_security_policy(BearerPolicy())
        if setup is not None:
            setup(config)
        return config.make_wsgi_app()


def alternate(base: str, path: str, rounds: int = ROUNDS, extra=None):
    """Both users in turn, ``rounds`` times; returns (leaks, x_cache values)."""
    client = Client(base)
    leaks, caches = 0, []
    try:
        for _ in range(rounds):
            for user in USERS:
                headers = {"Authorization": f"Bearer {user}", **(extra or {})}
                status, headers_out, body = client.request("GET", path, headers)
                assert status == 200, body[:200]
                other = USERS[1 - USERS.index(user)]
                leaks += other.encode() in body
                caches.append(headers_out.get("X-Cache"))
    finally:
        client.close()
    return leaks, caches


@pytest.fixture(params=["redis", "memory"])
def store(request, redis_url, redis_prefix):
    return (redis_url if request.param == "redis" else "memory://"), redis_prefix


# every documented per-user name, and how the app provides it
PER_USER_NAMES = {
    "authenticated_userid": None,
    "identity": None,
    "authenticated_identity": None,
    "user": lambda config: config.add_request_method(lambda r: r.identity, "user", reify=True),
    "user_id": lambda config: config.add_request_method(
        lambda r: r.authenticated_userid, "user_id", reify=True),
    "authorization": None,
}


@pytest.mark.parametrize("name", sorted(PER_USER_NAMES))
def test_every_per_user_vary_name_keeps_users_apart_and_still_hits(store, name):
    url, prefix = store

    def setup(config):
        if PER_USER_NAMES[name] is not None:
            PER_USER_NAMES[name](config)
        config.add_route("me", "/me")
        config.add_view(whoami, route_name="me", cache="me", cache_vary=(name,))

    app = make_app(url, prefix, setup)
    with thread_server(app, threads=4) as base:
        leaks, caches = alternate(base, "/me")
    stats = get_policy(app.registry).stats.snapshot()
    get_policy(app.registry).close()
    assert leaks == 0
    assert caches.count("MISS") == 2 and caches.count("HIT") == 2 * ROUNDS - 2, stats
    assert stats["stores"] == 2


def test_an_identity_object_without_str_is_keyed_by_the_userid_not_its_address(redis_url,
                                                                               redis_prefix):
    """The finding: ``str()`` of an identity object is a memory address -- entries leaked
    between users and grew without bound.  Keyed by ``authenticated_userid``: one
    entry per user."""
    import redis

    def setup(config):
        config.add_route("me", "/me")
        config.add_view(whoami, route_name="me", cache="me", cache_vary=("identity",))

    app = make_app(redis_url, redis_prefix, setup)
    with thread_server(app, threads=4) as base:
        leaks, _ = alternate(base, "/me")
    get_policy(app.registry).close()
    raw = redis.Redis.from_url(redis_url)
    entries = [k for k in raw.scan_iter(match=f"{redis_prefix}*v:@view:me*", count=1000)]
    raw.close()
    assert leaks == 0
    assert len(entries) == 2, entries


def test_user_without_a_request_user_is_keyed_by_the_userid(store):
    """The finding: ``cache_vary=("user",)`` on an app with no ``request.user`` made the
    key part None for everyone and authenticated requests filled it."""
    url, prefix = store

    def setup(config):
        config.add_route("me", "/me")
        config.add_view(whoami, route_name="me", cache="me", cache_vary=("user",))

    app = make_app(url, prefix, setup)
    with thread_server(app, threads=4) as base:
        leaks, caches = alternate(base, "/me")
    get_policy(app.registry).close()
    assert leaks == 0 and caches.count("HIT") == 2 * ROUNDS - 2


def test_a_per_user_name_the_request_lacks_bypasses_authenticated_requests(store):
    """``cache_vary=("user_id",)`` and no ``request.user_id``: authenticated requests
    bypass (counted as ``vary_bypasses``); anonymous ones share the anonymous entry."""
    url, prefix = store

    def setup(config):
        config.add_route("me", "/me")
        config.add_view(whoami, route_name="me", cache="me", cache_vary=("user_id",))

    app = make_app(url, prefix, setup)
    with thread_server(app, threads=4) as base:
        leaks, caches = alternate(base, "/me")
        client = Client(base)
        anonymous = [client.request("GET", "/me") for _ in range(3)]
        client.close()
    stats = get_policy(app.registry).stats.snapshot()
    get_policy(app.registry).close()
    assert leaks == 0
    assert caches.count("HIT") == 0 and stats["vary_bypasses"] == 2 * ROUNDS
    assert [a[1]["X-Cache"] for a in anonymous] == ["MISS", "HIT", "HIT"]
    assert all(a[2] == b"hello anonymous" for a in anonymous)


def test_a_vary_value_that_is_not_an_identifier_is_served_uncached_and_logged_once(
        store, caplog):
    url, prefix = store

    def setup(config):
        config.add_request_method(lambda r: r.identity, "account", reify=True)
        config.add_route("me", "/me")
        config.add_view(whoami, route_name="me", cache="me", cache_vary=("account",))

    app = make_app(url, prefix, setup)
    with caplog.at_level(logging.WARNING, logger="pyramid_examcache"):
        with thread_server(app, threads=4) as base:
            leaks, caches = alternate(base, "/me", rounds=20)
    stats = get_policy(app.registry).stats.snapshot()
    get_policy(app.registry).close()
    assert leaks == 0 and set(caches) == {"MISS"}
    assert stats["stores"] == 0 and stats["vary_bypasses"] == 40
    errors = [r for r in caplog.records if "not a stable identifier" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert "'account'" in errors[0].getMessage() and "User" in errors[0].getMessage()


def test_a_key_function_declared_by_the_app_keys_the_name(store):
    url, prefix = store

    def setup(config):
        config.add_cache_vary("account", lambda r: None if r.identity is None
                              else r.identity.name, per_user=True)
        config.add_request_method(lambda r: r.identity, "account", reify=True)
        config.add_route("me", "/me")
        config.add_view(whoami, route_name="me", cache="me", cache_vary=("account",))

    app = make_app(url, prefix, setup)
    with thread_server(app, threads=4) as base:
        leaks, caches = alternate(base, "/me")
    get_policy(app.registry).close()
    assert leaks == 0 and caches.count("HIT") == 2 * ROUNDS - 2


@pytest.mark.parametrize("name", ["session", "GET", "headers", "matchdict"])
def test_names_that_are_never_identifiers_are_a_configuration_error(name):
    def setup(config):
        config.add_route("me", "/me")
        config.add_view(whoami, route_name="me", cache="me", cache_vary=(name,))

    with pytest.raises(ConfigurationError, match=f"cache_vary={name!r}"):
        make_app("memory://", "x:", setup)


def test_a_per_user_key_function_on_a_public_view_is_a_configuration_error():
    def setup(config):
        config.add_cache_vary("account", lambda r: r.authenticated_userid, per_user=True)
        config.add_route("me", "/me")
        config.add_view(whoami, route_name="me", cache="me", cache_vary=("account",),
                        cache_public=True)

    with pytest.raises(ConfigurationError, match="cache_public=True"):
        make_app("memory://", "x:", setup)


@pytest.mark.parametrize("order", ["route first", "view first"])
def test_a_key_template_naming_a_value_the_route_cannot_have_is_refused_at_startup(order):
    def setup(config):
        if order == "route first":
            config.add_route("article", "/articles/{id}")
        config.add_view(whoami, route_name="article", cache="b:{article_id}")
        if order == "view first":
            config.add_route("article", "/articles/{id}")

    with pytest.raises(ConfigurationError, match="article_id"):
        make_app("memory://", "x:", setup)


def test_key_templates_the_route_provides_are_accepted():
    def setup(config):
        config.add_route("article", r"/articles/{id:\d{1,9}}/{slug}/*rest")
        config.add_view(whoami, route_name="article", cache="b:{id}:{slug}",
                        cache_tags=("r:{rest}",))

    make_app("memory://", "x:", setup)


def test_a_forged_host_never_poisons_the_entry_other_clients_get(store):
    """A view that builds absolute links from the request (``route_url``) keeps one
    entry per host name: a cold-key request with ``Host: evil.example`` is not what
    the next client of the real host gets."""
    url, prefix = store

    def links(request):
        return Response(request.route_url("page", id=request.matchdict["id"]),
                        content_type="text/plain")

    def setup(config):
        config.add_route("page", "/pages/{id}")
        config.add_view(links, route_name="page", cache="page:{id}", cache_public=True)

    app = make_app(url, prefix, setup)
    with thread_server(app, threads=4) as base:
        client = Client(base)
        evil = client.request("GET", "/pages/1", {"Host": "evil.example"})
        real = [client.request("GET", "/pages/1") for _ in range(2)]
        client.close()
    get_policy(app.registry).close()
    assert evil[2] == b"http://evil.example/pages/1"
    assert [r[1]["X-Cache"] for r in real] == ["MISS", "HIT"]
    assert all(b"evil" not in r[2] for r in real)


def test_views_of_one_route_that_differ_by_accept_never_share_an_entry(store):
    url, prefix = store

    def setup(config):
        config.add_route("doc", "/doc")
        config.add_view(lambda r: Response("<p>html</p>", content_type="text/html"),
                        route_name="doc", accept="text/html", cache="doc", cache_public=True)
        config.add_view(lambda r: Response(b'{"json": 1}', content_type="application/json"),
                        route_name="doc", accept="application/json", cache="doc",
                        cache_public=True)

    app = make_app(url, prefix, setup)
    with thread_server(app, threads=4) as base:
        client = Client(base)
        answers = [client.request("GET", "/doc", {"Accept": accept})
                   for _ in range(3) for accept in ("text/html", "application/json")]
        client.close()
    get_policy(app.registry).close()
    for i, (status, headers, body) in enumerate(answers):
        assert body == (b"<p>html</p>" if i % 2 == 0 else b'{"json": 1}')
    assert [a[1]["X-Cache"] for a in answers[2:]] == ["HIT"] * 4
