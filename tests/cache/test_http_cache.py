"""H1/H2: a cached view is an HTTP cache -- declared public views filled by
logged-in requests, query variants, replayed headers, ETag/304, HEAD, and the
safety rules (Set-Cookie, session, size, private, hashed vary values, separate
namespaces).  Real HTTP through waitress where the wire matters; each case runs
on Redis (a fresh private redis-server where keys are scanned) and, where
cheap, on the memory backend."""
from __future__ import annotations

import email.utils
import threading
import time

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.response import Response
from pyramid.session import SignedCookieSessionFactory
from webtest import TestApp

from pyramid_examcache.cache import get_policy
from pyramid_examcache.cache import http as cache_http
from pyramid_examcache.cache.variants import query_part
from pyramid_examcache.settings import parse_cache_settings

from .servers import Client, thread_server

LIMIT = 4096  # examcache.max_value_bytes of the test app
TOKEN = "sekret-bearer-token-0123456789"

#: what every header test view sets (hop-by-hop ones cannot pass through waitress:
#: they are checked on :func:`cache_http.stored_headers` directly below)
VIEW_HEADERS = {
    "Content-Type": "text/csv; charset=UTF-8",
    "Cache-Control": "public, max-age=60",
    "Last-Modified": "Sun, 29 Nov 2026 06:00:00 GMT",
    "Content-Language": "de-CH",
    "Content-Disposition": 'attachment; filename="questions.csv"',
    "Link": '</api/exams/1/questions?page=2>; rel="next"',
    "Vary": "Accept-Language",
    "X-Exam-Revision": "r-17",
}


class Loads:
    """How often each view really ran (a hit does not run it)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, name: str) -> int:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1
            return self.counts[name]

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


def make_app(redis_url: str, prefix: str, loads: Loads, **settings):
    def pages(request):
        n = loads("pages")
        return Response(f"id={request.matchdict['id']} page={request.GET.getall('page')} "
                        f"x={request.GET.getall('x')} load={n}", content_type="text/plain")

    def headers(request):
        loads("headers")
        response = Response(body=f"a;b\n1;{request.matchdict['id']}\n".encode())
        for name, value in VIEW_HEADERS.items():
            response.headers[name] = value
        if request.matchdict["id"] == "own":
            response.headers["ETag"] = '"the-views-own-etag"'
        return response

    def cookie(request):
        loads("cookie")
        response = Response("with a cookie", content_type="text/plain")
        response.set_cookie("pref", "x")
        return response

    def session(request):
        loads("session")  # a CSRF token in the body: the session cookie is set afterwards
        return Response(f"csrf={request.session.get_csrf_token()}", content_type="text/plain")

    def size(request):
        loads("size")
        return Response(b"x" * int(request.matchdict["n"]), content_type="text/plain")

    def private(request):
        loads("private")
        response = Response("mine", content_type="text/plain")
        response.headers["Cache-Control"] = request.matchdict["cc"].replace("_", "-")
        return response

    def shared(request):
        return Response(f"shared load={loads('shared')}", content_type="text/plain")

    def public(request):
        return Response(f"public load={loads('public')}", content_type="text/plain")

    def by_token(request):
        loads("token")
        return Response(f"for {request.headers.get('Authorization', 'nobody')}",
                        content_type="text/plain")

    def doc_view(request):
        return Response(f"doc view load={loads('doc-view')}", content_type="text/plain")

    def doc_json(request):
        return request.cache.get_or_set(f"doc:{request.matchdict['id']}",
                                        lambda: {"doc": "json", "load": loads("doc-json")})

    def doc_touch(request):
        request.cache.invalidate(f"doc:{request.matchdict['id']}")
        return Response("ok")

    def http_cached(request):
        return Response(f"http_cache load={loads('http_cache')}", content_type="text/plain")

    settings = {"examcache.redis_url": redis_url, "examcache.key_prefix": prefix,
                "examcache.max_value_bytes": str(LIMIT), **settings}
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        config.set_session_factory(SignedCookieSessionFactory("s" * 32))
        routes = [
            ("pages", "/pages/{id}", pages, dict(cache="pages:{id}", cache_params=("page",))),
            # (the view sends Vary: Accept-Language: its key must vary on it too)
            ("headers", "/headers/{id}", headers, dict(cache="headers:{id}",
                                                       cache_vary=("accept_language",))),
            ("cookie", "/cookie/{id}", cookie, dict(cache="cookie:{id}")),
            ("session", "/session/{id}", session, dict(cache="session:{id}")),
            ("size", "/size/{n}", size, dict(cache="size:{n}")),
            ("private", "/private/{cc}", private, dict(cache="private:{cc}")),
            ("shared", "/shared/{id}", shared, dict(cache="shared:{id}")),
            ("public", "/public/{id}", public, dict(cache="public:{id}", cache_public=True)),
            ("token", "/token/{id}", by_token, dict(cache="token:{id}",
                                                    cache_vary=("authorization",))),
            ("doc", "/doc/{id}", doc_view, dict(cache="doc:{id}")),
            ("doc_json", "/doc/{id}/json", doc_json, dict(renderer="json")),
            ("doc_touch", "/doc/{id}/touch", doc_touch, {}),
            ("http_cache", "/http-cache/{id}", http_cached,
             dict(cache="http-cache:{id}", http_cache=3600)),
        ]
        for name, pattern, view, options in routes:
            config.add_route(name, pattern)
            config.add_view(view, route_name=name, **options)
        return config.make_wsgi_app()


@pytest.fixture(params=["redis", "memory"])
def served(request, private_redis, redis_prefix):
    """(base URL, loads, policy, raw Redis client or None) of the test app under waitress."""
    loads = Loads()
    url = private_redis.url if request.param == "redis" else "memory://"
    app = make_app(url, redis_prefix, loads)
    raw = private_redis.client() if request.param == "redis" else None
    with thread_server(app, threads=8) as base:
        yield base, loads, get_policy(app.registry), raw
    get_policy(app.registry).close()
    if raw is not None:
        raw.close()


class Headers(dict):
    """Response headers by case-insensitive name (waitress may change the case);
    a missing one raises KeyError."""

    def __init__(self, pairs):
        super().__init__((k.lower(), v) for k, v in pairs)

    def __getitem__(self, name):
        return super().__getitem__(name.lower())

    def __contains__(self, name):
        return super().__contains__(name.lower())


def get(base, path, headers=None, method="GET"):
    client = Client(base)
    try:
        client.conn.request(method, path, headers=headers or {})
        resp = client.conn.getresponse()
        return resp.status, Headers(resp.getheaders()), resp.read()
    finally:
        client.close()


def stored_keys(raw) -> list[str]:
    return sorted(k.decode("latin-1") for k in raw.scan_iter(match="*", count=1000))


# -- H1: declared public views are filled by logged-in requests --------------------

def test_a_public_view_is_filled_and_served_by_logged_in_requests(served):
    base, loads, policy, _ = served
    auth = {"Authorization": "Bearer reader-1"}
    statuses = [get(base, "/public/1", auth)[1]["X-Cache"] for _ in range(5)]
    assert statuses == ["MISS", "HIT", "HIT", "HIT", "HIT"]
    assert loads["public"] == 1
    # the same requests on a view not declared public are served but never fill it (G5)
    statuses = [get(base, "/shared/1", auth)[1]["X-Cache"] for _ in range(3)]
    assert statuses == ["MISS", "MISS", "MISS"] and loads["shared"] == 3
    assert get(base, "/shared/1")[1]["X-Cache"] == "MISS"  # an anonymous request fills it
    assert get(base, "/shared/1", auth)[1]["X-Cache"] == "HIT"


def test_public_with_a_per_user_vary_is_a_configuration_error():
    with Configurator(settings={"examcache.redis_url": "memory://"}) as config:
        config.include("pyramid_examcache")
        config.add_route("x", "/x")
        config.add_view(lambda r: Response("x"), route_name="x", cache="x",
                        cache_public=True, cache_vary=("authenticated_userid",))
        with pytest.raises(ConfigurationError, match="cache_public"):
            config.commit()
    get_policy(config.registry).close()


# -- query strings ------------------------------------------------------------------

def test_declared_query_parameters_make_variants_and_undeclared_ones_bypass(served):
    base, loads, policy, _ = served
    one = get(base, "/pages/1?page=1")
    two = get(base, "/pages/1?page=2")
    assert (one[1]["X-Cache"], two[1]["X-Cache"]) == ("MISS", "MISS")
    assert b"page=['1']" in one[2] and b"page=['2']" in two[2]
    for _ in range(3):
        assert get(base, "/pages/1?page=1")[2] == one[2]
        assert get(base, "/pages/1?page=2")[2] == two[2]
    assert loads["pages"] == 2
    # repeated values keep their order; names are sorted (one parameter here)
    ab = get(base, "/pages/1?page=a&page=b")
    ba = get(base, "/pages/1?page=b&page=a")
    assert b"page=['a', 'b']" in ab[2] and b"page=['b', 'a']" in ba[2]
    assert ba[1]["X-Cache"] == "MISS"
    # an undeclared parameter: the view runs, its own body is served, nothing is stored
    bypasses = policy.stats.snapshot()["param_bypasses"]
    before = loads["pages"]
    for i in range(3):
        status, headers, body = get(base, "/pages/1?page=1&x=1")
        assert status == 200 and b"x=['1']" in body and body != one[2]
    assert loads["pages"] == before + 3
    assert policy.stats.snapshot()["param_bypasses"] == bypasses + 3
    assert get(base, "/pages/1?x=1")[2] != one[2]
    # escaping: a value cannot forge another variant's key
    forged = get(base, "/pages/1?page=1%26page%3D2")
    assert b"page=['1&page=2']" in forged[2] and forged[1]["X-Cache"] == "MISS"
    assert get(base, "/pages/1?page=1&page=2")[2] != forged[2]


def test_query_normalisation():
    from webob.multidict import MultiDict

    declared = frozenset({"page", "sort"})
    q = MultiDict([("sort", "b"), ("page", "2"), ("sort", "a")])
    assert query_part(declared, q) == "?page=2&sort=b&sort=a"
    assert query_part(declared, MultiDict([("page", "x&sort=y")])) == "?page=x%26sort%3Dy"
    assert query_part(declared, MultiDict()) == ""
    assert query_part(declared, MultiDict([("page", "1"), ("utm", "z")])) is None


def test_invalidating_the_base_key_drops_every_variant(served):
    base, loads, policy, _ = served
    for page in ("1", "2"):
        get(base, f"/pages/7?page={page}")
        assert get(base, f"/pages/7?page={page}")[1]["X-Cache"] == "HIT"
    assert policy.invalidate_now(["pages:7"]) is True
    assert get(base, "/pages/7?page=1")[1]["X-Cache"] == "MISS"
    assert get(base, "/pages/7?page=2")[1]["X-Cache"] == "MISS"
    assert get(base, "/pages/7")[1]["X-Cache"] == "MISS"


# -- headers, HEAD ------------------------------------------------------------------

@pytest.mark.parametrize("which", ["ours", "own"])
def test_headers_are_byte_identical_on_miss_and_hit(served, which):
    base, loads, _, _ = served
    miss = get(base, f"/headers/{which}")
    hit = get(base, f"/headers/{which}")
    assert (miss[1]["X-Cache"], hit[1]["X-Cache"]) == ("MISS", "HIT")
    assert loads["headers"] == 1
    for name, value in VIEW_HEADERS.items():
        assert miss[1][name] == value and hit[1][name] == value, name
    for name in ("ETag", "Content-Length", "Content-Type"):
        assert hit[1][name] == miss[1][name], name
    assert hit[2] == miss[2]
    if which == "own":
        assert hit[1]["ETag"] == '"the-views-own-etag"'
    else:
        assert hit[1]["ETag"].startswith('"') and len(hit[1]["ETag"]) == 24


def test_hop_by_hop_headers_are_not_stored():
    response = Response(b"body")
    for name, value in [("Keep-Alive", "timeout=5"), ("Connection", "X-Hop"),
                        ("X-Hop", "1"), ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
                        ("Proxy-Authenticate", "Basic"), ("TE", "trailers"),
                        ("Trailer", "X-T"), ("X-Cache", "MISS"), ("X-Kept", "yes")]:
        response.headers[name] = value
    names = [n for n, _ in cache_http.stored_headers(response)]
    assert names == ["Content-Type", "X-Kept"]


def test_set_cookie_responses_are_never_stored(served):
    base, loads, policy, raw = served
    for _ in range(3):
        status, headers, _ = get(base, "/cookie/1")
        assert headers["X-Cache"] == "MISS" and "pref=x" in headers["Set-Cookie"]
    assert loads["cookie"] == 3
    if raw is not None:
        assert not [k for k in stored_keys(raw) if "cookie:1" in k and ":v:" in k]


def test_head_is_answered_from_the_get_entry_without_a_body(served):
    base, loads, _, _ = served
    got = get(base, "/headers/h")
    head = get(base, "/headers/h", method="HEAD")
    assert head[0] == 200 and head[2] == b"" and head[1]["X-Cache"] == "HIT"
    assert head[1]["Content-Length"] == got[1]["Content-Length"] == str(len(got[2]))
    assert head[1]["ETag"] == got[1]["ETag"]
    assert loads["headers"] == 1


def test_a_head_miss_that_renders_no_body_stores_nothing(private_redis, redis_prefix):
    calls = []

    def view(request):
        calls.append(request.method)
        return Response(b"" if request.method == "HEAD" else b"the body",
                        content_type="text/plain")

    with Configurator(settings={"examcache.redis_url": private_redis.url,
                                "examcache.key_prefix": redis_prefix}) as config:
        config.include("pyramid_examcache")
        config.add_route("h", "/h")
        config.add_view(view, route_name="h", cache="h")
        app = TestApp(config.make_wsgi_app())
    assert app.head("/h").headers["X-Cache"] == "MISS"
    got = app.get("/h")
    assert got.headers["X-Cache"] == "MISS" and got.body == b"the body"
    # (the HEAD released its lease unfilled: GETs load without storing for up to
    # BYPASS_MS, then one stores) -- never an empty body, and a HIT in the end
    deadline = time.monotonic() + 10
    while True:
        again = app.get("/h")
        assert again.body == b"the body"
        if again.headers["X-Cache"] == "HIT" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert again.headers["X-Cache"] == "HIT"
    assert calls[0] == "HEAD" and "HEAD" not in calls[1:]
    get_policy(app.app.registry).close()


# -- ETag / 304 -----------------------------------------------------------------------

def test_revalidation_gets_304_with_no_body_on_a_hit_and_on_a_miss(served):
    base, loads, policy, _ = served
    miss = get(base, "/headers/e")
    etag = miss[1]["ETag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        status, headers, body = get(base, "/headers/e", {"If-None-Match": header})
        assert (status, body, headers["X-Cache"]) == (304, b"", "HIT"), header
        assert headers["ETag"] == etag
        assert headers["Cache-Control"] == VIEW_HEADERS["Cache-Control"]
        assert headers["Vary"] == VIEW_HEADERS["Vary"]
        assert "Content-Type" not in headers and "X-Exam-Revision" not in headers
    status, _, body = get(base, "/headers/e", {"If-None-Match": '"other", W/"x"'})
    assert status == 200 and body == miss[2]
    assert policy.stats.snapshot()["not_modified"] == 4
    # a miss that renders the same entity: 304 too (after an invalidation)
    policy.invalidate_now(["headers:e"])
    status, headers, body = get(base, "/headers/e", {"If-None-Match": etag})
    assert (status, body, headers["X-Cache"]) == (304, b"", "MISS")
    assert loads["headers"] == 2


def test_the_etag_changes_with_the_stored_bytes(served):
    base, loads, policy, _ = served
    first = get(base, "/public/9")
    policy.invalidate_now(["public:9"])
    status, headers, body = get(base, "/public/9", {"If-None-Match": first[1]["ETag"]})
    assert status == 200 and body == b"public load=2" and headers["X-Cache"] == "MISS"
    assert headers["ETag"] != first[1]["ETag"]
    assert get(base, "/public/9", {"If-None-Match": headers["ETag"]})[0] == 304


def test_pyramid_http_cache_wraps_the_cached_view(served):
    base, loads, _, _ = served
    miss = get(base, "/http-cache/1")
    hit = get(base, "/http-cache/1")
    assert (miss[1]["X-Cache"], hit[1]["X-Cache"]) == ("MISS", "HIT") and loads["http_cache"] == 1
    assert miss[1]["Cache-Control"] == hit[1]["Cache-Control"] == "max-age=3600"
    expires = email.utils.parsedate_to_datetime(hit[1]["Expires"])
    assert expires.timestamp() >= email.utils.parsedate_to_datetime(
        miss[1]["Expires"]).timestamp()
    revalidated = get(base, "/http-cache/1", {"If-None-Match": hit[1]["ETag"]})
    assert revalidated[0] == 304 and revalidated[2] == b""
    assert revalidated[1]["Cache-Control"] == "max-age=3600" and "Expires" in revalidated[1]


def test_http_cache_private_with_cache_is_refused():
    with Configurator(settings={"examcache.redis_url": "memory://"}) as config:
        config.include("pyramid_examcache")
        config.add_route("x", "/x")
        config.add_view(lambda r: Response("x"), route_name="x", cache="x",
                        http_cache=(60, {"private": True}))
        with pytest.raises(ConfigurationError, match="private"):
            config.commit()
    get_policy(config.registry).close()


def test_if_none_match_parsing():
    class R:
        def __init__(self, value):
            self.headers = {"If-None-Match": value} if value is not None else {}

    assert cache_http.matches(R('"a"'), '"a"')
    assert cache_http.matches(R('W/"a"'), '"a"')
    assert cache_http.matches(R(' "b" ,W/"a" '), '"a"')
    assert cache_http.matches(R("*"), '"a"')
    assert not cache_http.matches(R('"ab"'), '"a"')
    assert not cache_http.matches(R('"a'), '"a"')
    assert not cache_http.matches(R(None), '"a"')
    assert not cache_http.matches(R('"b", W/"c"'), '"a"')


# -- safety -----------------------------------------------------------------------------

def test_a_response_whose_view_read_the_session_is_not_stored(served):
    base, loads, policy, _ = served
    first = get(base, "/session/1")
    second = get(base, "/session/1")
    assert first[1]["X-Cache"] == second[1]["X-Cache"] == "MISS"
    assert first[2] != second[2]  # each visitor its own CSRF token, never another's
    assert loads["session"] == 2
    assert policy.stats.snapshot()["uncacheable"] >= 2


def test_request_session_is_reified():
    """What the session check relies on: once read, the session sits in __dict__."""
    from pyramid.request import Request

    assert "session" in Request.__dict__ and hasattr(Request.__dict__["session"], "wrapped")


@pytest.mark.parametrize("cc", ["private", "no_store", "private_max-age=60"])
def test_private_and_no_store_responses_are_not_stored(served, cc):
    base, loads, _, _ = served
    assert [get(base, f"/private/{cc}")[1]["X-Cache"] for _ in range(2)] == ["MISS", "MISS"]
    assert loads["private"] == 2


def test_values_larger_than_max_value_bytes_are_not_stored(served):
    base, loads, policy, _ = served
    assert [get(base, "/size/100")[1]["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    for _ in range(3):
        status, headers, body = get(base, f"/size/{LIMIT + 1}")
        assert status == 200 and len(body) == LIMIT + 1 and headers["X-Cache"] == "MISS"
    assert loads["size"] == 4
    # (counted when the lease holder declines; the requests right after it load
    # without a lease during the release's bypass window, so >= 1, not 3)
    too_large = policy.stats.snapshot()["too_large"]
    assert too_large >= 1
    # get_or_set values too
    calls = []
    for _ in range(2):
        policy.get_or_set("big-json", lambda: calls.append(1) or "y" * LIMIT)
    assert len(calls) == 2 and policy.stats.snapshot()["too_large"] == too_large + 1
    assert policy.get_or_set("small-json", lambda: "y") == "y"
    assert policy.get_or_set("small-json", lambda: "z") == "y"


@pytest.mark.parametrize("raw_value", ["0", "-1", "1MB", "1.5"])
def test_max_value_bytes_is_validated(raw_value):
    with pytest.raises(ConfigurationError, match="examcache.max_value_bytes"):
        parse_cache_settings({"examcache.max_value_bytes": raw_value})
    assert parse_cache_settings({}).max_value_bytes == 1048576


def test_vary_values_are_hashed_in_key_names_and_get_vary(private_redis, redis_prefix):
    loads = Loads()
    app = make_app(private_redis.url, redis_prefix, loads)
    raw = private_redis.client()
    with thread_server(app, threads=4) as base:
        mine = {"Authorization": f"Bearer {TOKEN}"}
        other = {"Authorization": "Bearer someone-else-entirely"}
        a1, a2 = get(base, "/token/1", mine), get(base, "/token/1", mine)
        b1 = get(base, "/token/1", other)
        assert (a1[1]["X-Cache"], a2[1]["X-Cache"], b1[1]["X-Cache"]) == ("MISS", "HIT", "MISS")
        assert TOKEN.encode() in a2[2] and TOKEN.encode() not in b1[2]
        assert a1[1]["Vary"] == a2[1]["Vary"] == "Authorization"
        keys = stored_keys(raw)
        entries = [k for k in keys if ":v:@view:token:1|authorization=" in k]
        assert len(entries) == 2, keys
        assert not [k for k in keys if TOKEN in k or "someone-else" in k or "Bearer" in k]
        values = b"".join(raw.hget(k, "d") for k in entries)
        assert TOKEN.encode() in values  # the body is stored, only the key name is hashed
    get_policy(app.registry).close()
    raw.close()


def test_a_view_and_get_or_set_on_the_same_key_do_not_collide(served):
    base, loads, policy, raw = served
    for _ in range(2):
        view = get(base, "/doc/1")
        data = get(base, "/doc/1/json")
        assert view[0] == 200 and view[2] == b"doc view load=1"
        assert data[0] == 200 and data[2] == b'{"doc": "json", "load": 1}'
    assert get(base, "/doc/1")[1]["X-Cache"] == "HIT"
    # invalidating the key drops both: the JSON value and the view's entry
    assert get(base, "/doc/1/touch")[0] == 200
    assert get(base, "/doc/1")[2] == b"doc view load=2"
    assert get(base, "/doc/1/json")[2] == b'{"doc": "json", "load": 2}'
    with pytest.raises(ValueError, match="reserved"):
        policy.get_or_set("@view:doc:1", lambda: 1)


def test_a_warm_revalidation_transfers_no_value_bytes_from_redis(private_redis, redis_prefix):
    """With the near cache (on by default) a hit -- 304 or 200 -- asks Redis only for the
    fill stamp and tag versions: Redis's output per revalidation is far below the body."""
    loads = Loads()
    app = make_app(private_redis.url, redis_prefix, loads)
    raw = private_redis.client()
    body = 3000
    with thread_server(app, threads=4) as base:
        first = get(base, f"/size/{body}")
        assert get(base, f"/size/{body}")[1]["X-Cache"] == "HIT"  # the process holds it now
        before = raw.info("stats")["total_net_output_bytes"]
        for _ in range(20):
            status, headers, answer = get(base, f"/size/{body}",
                                          {"If-None-Match": first[1]["ETag"]})
            assert (status, answer, headers["X-Cache"]) == (304, b"", "HIT")
        sent = raw.info("stats")["total_net_output_bytes"] - before
    print(f"\n[304] Redis sent {sent / 20:.0f} bytes per revalidation (body {body})")
    assert sent / 20 < body / 4
    assert loads["size"] == 1
    get_policy(app.registry).close()
    raw.close()
