"""The cheap hit path of cached views (issue 11): what it remembers between
requests -- resolved keys per set of matchdict values, decoded entity heads --
gives the answers it gave before, and a key or tag that cannot be used never
turns into a 500."""
from __future__ import annotations

import pytest
from pyramid.config import Configurator
from pyramid.response import Response
from webtest import TestApp

from pyramid_examcache.cache import codec, get_policy
from pyramid_examcache.cache import http as cache_http
from pyramid_examcache.cache.views import RESOLVED_CHARS, CacheSpec

HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "public, max-age=60"),
           ("ETag", '"abc"'), ("Vary", "Accept-Language"), ("X-Exam-Revision", "r-17")]


def make_app():
    loads: dict[str, int] = {}

    def item(request):
        loads[request.matchdict["id"]] = loads.get(request.matchdict["id"], 0) + 1
        return Response(f"item {request.matchdict['id']!r}", content_type="text/plain")

    with Configurator(settings={"examcache.redis_url": "memory://"}) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
        config.add_route("item", "/item/{id}")
        # a tag template longer than the key's: a long id makes the tag too long first
        config.add_view(item, route_name="item", cache="item:{id}",
                        cache_tags=("t" * 200 + ":{id}",))
        app = config.make_wsgi_app()
    return TestApp(app), loads, get_policy(app.registry)


@pytest.fixture
def served():
    app, loads, policy = make_app()
    yield app, loads, policy
    policy.close()


def test_the_hit_response_is_the_one_webob_built_before():
    body = b'{"questions": []}'
    before = Response(body=body, headerlist=list(HEADERS))
    before.headers["X-Cache"] = "HIT"
    after = cache_http.replay(tuple(HEADERS), body, "HIT")
    assert after.headerlist == before.headerlist
    assert after.status == before.status and after.body == before.body
    assert after.conditional_response == before.conditional_response


@pytest.mark.parametrize("size", [10, cache_http.HEAD_MEMO_BYTES + 10])
def test_entity_heads_decode_as_the_codec_does(size):
    headers = [*HEADERS, ("X-Long", "v" * size)]
    data = codec.encode_entity('"abc"', headers, b"body\nwith newlines\n")
    etag, replayed, offset = cache_http.entity_head(data)
    assert (etag, list(replayed), offset) == codec.decode_head(data)
    assert isinstance(replayed, tuple)  # shared between hits: nobody can change it in place
    assert cache_http.entity_head(bytearray(data)) == (etag, replayed, offset)
    assert data[offset:] == b"body\nwith newlines\n"


@pytest.mark.parametrize("data", [b"j{}", b"h{no newline", b"", b"h{not json\nbody"])
def test_what_is_not_an_entity_raises_value_error(data):
    with pytest.raises(ValueError):
        cache_http.entity_head(data)


def test_an_entry_holding_content_length_or_x_cache_replays_neither():
    # (never stored by this version; a hit built its response without them before too)
    data = codec.encode_entity('"e"', [("Content-Length", "1"), ("X-Cache", "MISS"),
                                       ("Content-Type", "text/plain")], b"body")
    assert cache_http.entity_head(data)[1] == (("Content-Type", "text/plain"),)


def test_ids_that_escape_alike_get_their_own_entries(served):
    app, loads, _ = served
    for path in ("/item/a%20b", "/item/a%2520b", "/item/a%20b", "/item/a%2520b"):
        app.get(path)
    assert loads == {"a b": 1, "a%20b": 1}
    assert app.get("/item/a%20b").text == "item 'a b'"
    assert app.get("/item/a%2520b").text == "item 'a%20b'"


def test_a_key_or_tag_too_long_is_served_without_the_cache_not_a_500(served):
    app, loads, policy = served
    long_id = "x" * 900  # the key (item:…) fits in 1024 characters, the tag (t…t:…) does not
    for _ in range(2):
        response = app.get(f"/item/{long_id}")
        assert response.status_int == 200 and "X-Cache" not in response.headers
    assert loads[long_id] == 2
    assert policy.stats.snapshot()["bypasses"] == 2
    assert [app.get("/item/1").headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]


def test_resolved_keys_are_remembered_for_short_values_only():
    spec = CacheSpec("item:{id}:{kind}", tags=("kind:{kind}",))

    class Request:
        def __init__(self, **matchdict):
            self.matchdict = matchdict

    assert spec.resolve(Request(id="1", kind="a b")) == (
        "item:1:a%20b", ("kind:a%20b", "@key:item:1:a%20b"), "@view:item:1:a%20b")
    assert spec.resolve(Request(id=1, kind="a")) == spec.resolve(Request(id="1", kind="a"))
    assert spec.resolve(Request(id=True, kind="a"))[0] == "item:True:a"  # True == 1, not the text
    long = "y" * RESOLVED_CHARS
    assert spec.resolve(Request(id=long, kind="a"))[0] == f"item:{long}:a"
    assert spec._resolved.cache_info().currsize == 3  # the long value was not kept
    with pytest.raises(KeyError):
        spec.resolve(Request(id="1"))


def test_a_dummy_request_keeps_its_method_query_and_if_none_match():
    # pyramid.testing.DummyRequest keeps method, GET and headers outside its (empty) environ
    from pyramid.testing import DummyRequest
    from webob.multidict import MultiDict

    from pyramid_examcache.cache import CachePolicy, RequestCache
    from pyramid_examcache.cache.backends.memory import MemoryBackend
    from pyramid_examcache.cache.views import serve_cached

    policy = CachePolicy(MemoryBackend())
    spec = CacheSpec("item:{id}", params=("page",))
    runs = []

    def view(context, request):
        runs.append(request.method)
        return Response("body", content_type="text/plain")

    def request(method="GET", params=None, headers=None):
        r = DummyRequest(params=MultiDict(params or {}), headers=headers)
        r.method = method
        r.matchdict = {"id": "1"}
        del r.session  # (a DummyRequest comes with one: a response "read" it, never stored)
        r.cache = RequestCache(policy, r)
        return r

    assert serve_cached(spec, view, None, request("POST")).headers.get("X-Cache") is None
    assert serve_cached(spec, view, None, request(params={"x": "1"})).headers["X-Cache"] == "MISS"
    assert policy.stats.snapshot()["param_bypasses"] == 1
    assert serve_cached(spec, view, None, request(params={"page": "2"})).headers["X-Cache"] == "MISS"
    hit = serve_cached(spec, view, None, request(params={"page": "2"}))
    assert hit.headers["X-Cache"] == "HIT" and hit.body == b"body"
    etag = hit.headers["ETag"]
    revalidated = serve_cached(spec, view, None, request(params={"page": "2"},
                                                         headers={"If-None-Match": etag}))
    assert revalidated.status_int == 304 and revalidated.headers["X-Cache"] == "HIT"
    assert runs == ["POST", "GET", "GET"]
