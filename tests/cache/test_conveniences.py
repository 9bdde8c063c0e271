"""The conveniences: ``get``/``set``/``delete`` and their ``_many`` forms on ``request.cache``
and on the policy, ``cache_on_arguments``, ``X-Cache: BYPASS`` when disabled, and the help
of the consumer-only mail metrics. Through the public API, on ``memory://`` and on a
private redis-server (two backends on it stand for two processes)."""
from __future__ import annotations

import datetime
import threading

import pytest
import webtest
from prometheus_client.parser import text_string_to_metric_families
from pyramid.config import Configurator
from pyramid.scripting import prepare

from pyramid_examcache import cache_on_arguments
from pyramid_examcache.cache import NotJSONArgument, build_policy, get_policy
from pyramid_examcache.cache.codec import NotJSONValue
from pyramid_examcache.settings import parse_cache_settings

from ..polling import wait_until

PREFIX = "conv:"


def settings_for(url: str, **extra: str) -> dict[str, str]:
    return {"examcache.redis_url": url, "examcache.key_prefix": PREFIX,
            "examcache.invalidation_log": "false", **extra}


@pytest.fixture(params=["memory", "redis"])
def url(request):
    if request.param == "memory":
        return "memory://"
    return request.getfixturevalue("private_redis").url


@pytest.fixture
def policies():
    """``make(url, **settings)``: a policy (each its own backend: another process's view
    of a Redis), closed after the test."""
    made = []

    def make(url: str, **extra: str):
        policy = build_policy(parse_cache_settings(settings_for(url, **extra)))
        made.append(policy)
        return policy

    yield make
    for policy in made:
        policy.close()


def thing_view(request):
    request.registry["things"] = request.registry.get("things", 0) + 1
    return {"things": request.registry["things"]}


def make_app(url: str, **extra: str):
    config = Configurator(settings={**settings_for(url, **extra),
                                    "tm.manager_hook": "pyramid_tm.explicit_manager"})
    config.include("pyramid_tm")
    config.include("pyramid_examcache.cache")
    config.include("pyramid_examcache.metrics")
    config.add_route("thing", "/thing")
    config.add_view(thing_view, route_name="thing", renderer="json", cache="thing")
    return config.make_wsgi_app()


@pytest.fixture
def script_request(url):
    """A script's request (``pyramid.scripting.prepare``, as ``bootstrap`` gives) with
    pyramid_tm's explicit manager; its policy; closed after the test."""
    app = make_app(url)
    env = prepare(registry=app.registry)
    yield env["request"], get_policy(app.registry)
    env["closer"]()
    get_policy(app.registry).close()


# -- get / set / delete ----------------------------------------------------------------------

def test_get_set_delete_and_the_many_forms(policies, url):
    policy = policies(url)
    assert policy.get("k") is None and policy.get("k", "absent") == "absent"
    assert policy.set("k", {"a": (1, 2)}, ttl=60, tags=["t"]) is True
    assert policy.get("k") == {"a": [1, 2]}  # what JSON gives back
    assert policy.set_many({"m1": 1, "m2": None}) is True
    assert policy.get_many(["m1", "m2", "nope"]) == {"m1": 1, "m2": None}
    policy.invalidate_now(tags=["t"])  # the tags given to set are the value's
    assert policy.get("k", "gone") == "gone"
    assert policy.delete("m1") is True and policy.get_many(["m1", "m2"]) == {"m2": None}
    assert policy.delete_many(["m2"]) is True and policy.get_many(["m1", "m2"]) == {}
    with pytest.raises(NotJSONValue, match="'d'"):
        policy.set("d", {"when": datetime.date(2024, 1, 1)})
    with pytest.raises(ValueError, match="reserved"):
        policy.set("@view", 1)
    with pytest.raises(ValueError, match="ttl"):
        policy.set("k", 1, ttl=0)
    assert policy.get("d") is None


def test_a_set_is_a_write_a_load_that_read_before_it_stores_nothing(policies, url):
    """A loader holding the key's lease read the old data; a set lands meanwhile: the set's
    value stays (the loader's fill is refused), as after an invalidation."""
    policy = policies(url)
    loading, release = threading.Event(), threading.Event()
    got = []

    def old_loader():
        loading.set()
        assert release.wait(10)
        return "old"

    loader = threading.Thread(target=lambda: got.append(policy.get_or_set("k", old_loader)))
    loader.start()
    assert loading.wait(10)
    assert policy.set("k", "new") is True
    release.set()
    loader.join(10)
    assert got == ["old"]  # the loader's own caller gets what it loaded
    assert policy.get("k") == "new"
    assert policy.stats.snapshot()["stale_rejected"] == 1


@pytest.mark.parametrize("mode", ["check", "barrier", "lease"])
def test_another_process_near_cache_sees_a_set_on_its_next_read(private_redis, policies, mode):
    extra = {"examcache.near_cache": mode}
    writer = policies(private_redis.url, **extra)
    reader = policies(private_redis.url, **extra)
    assert writer.set("k", "v1") is True
    wait_until(lambda: reader.get("k") == "v1" and reader.backend.near_cache_bytes() > 0,
               timeout=10, message="the reader holds v1 in its near cache")
    for version in range(2, 30):
        assert writer.set("k", f"v{version}") is True
        assert reader.get("k") == f"v{version}"  # its very next read, no polling
        assert reader.get_or_set("k", lambda: "loaded") == f"v{version}"


@pytest.mark.parametrize("mode", ["check", "barrier", "lease"])
def test_a_committed_request_cache_set_reaches_another_process_near_cache(private_redis,
                                                                         policies, mode):
    """``request.cache.set`` in a transaction: another process (its own backend, tracking)
    keeps its near-cached value until the commit, and reads the new one on its very next
    read after it."""
    extra = {"examcache.near_cache": mode}
    app = make_app(private_redis.url, **extra)
    env = prepare(registry=app.registry)
    request, reader = env["request"], policies(private_redis.url, **extra)
    try:
        request.cache.set("k", "v1")  # no transaction: at once
        wait_until(lambda: reader.get("k") == "v1" and reader.backend.near_cache_bytes() > 0,
                   timeout=10, message="the reader holds v1 in its near cache")
        for version in range(2, 12):
            request.tm.begin()
            request.cache.set("k", f"v{version}")
            assert reader.get("k") == f"v{version - 1}"  # not before the commit
            request.tm.commit()
            assert reader.get("k") == f"v{version}"  # its very next read, no polling
    finally:
        env["closer"]()
        get_policy(app.registry).close()


# -- in a transaction --------------------------------------------------------------------------

def test_set_and_delete_wait_for_the_commit_and_vanish_on_abort(script_request):
    request, policy = script_request
    request.tm.begin()
    request.cache.set("k", {"v": 1}, ttl=60)
    assert policy.get("k") is None  # not before the commit
    assert request.cache.get("k", "own") == "own"  # the transaction wrote: not read
    request.tm.abort()
    assert policy.get("k") is None  # never: aborted
    request.tm.begin()
    request.cache.set_many({"k": {"v": 2}, "j": 3})
    request.tm.commit()
    assert policy.get_many(["k", "j"]) == {"k": {"v": 2}, "j": 3}
    assert request.cache.get("k") == {"v": 2}  # no transaction now: at once
    assert request.cache.get_many(["k", "j", "nope"]) == {"k": {"v": 2}, "j": 3}
    request.tm.begin()
    request.cache.delete("k")
    request.cache.delete_many(["j"])
    assert policy.get_many(["k", "j"]) == {"k": {"v": 2}, "j": 3}
    assert request.cache.get_many(["k", "j"]) == {}  # the transaction wrote: not read
    request.tm.abort()
    assert policy.get_many(["k", "j"]) == {"k": {"v": 2}, "j": 3}
    request.tm.begin()
    request.cache.delete("k")
    request.tm.commit()
    assert policy.get_many(["k", "j"]) == {"j": 3}


def test_a_set_in_a_transaction_is_checked_and_copied_at_once(script_request):
    request, policy = script_request
    request.tm.begin()
    with pytest.raises(NotJSONValue):
        request.cache.set("k", {1, 2})
    value = {"items": [1]}
    request.cache.set("k", value)
    value["items"].append(2)  # later changes are not what is stored
    request.tm.commit()
    assert policy.get("k") == {"items": [1]}


# -- cache_on_arguments ------------------------------------------------------------------------

def counting(**options):
    calls: list = []

    @cache_on_arguments(**options)
    def summary(request, exam_id, lang="en", *, detail=False):
        calls.append((exam_id, lang, detail))
        return {"exam": exam_id, "lang": lang, "detail": detail, "calls": len(calls)}

    return summary, calls


def test_the_key_is_the_arguments_and_the_value_json(script_request):
    request, policy = script_request
    summary, calls = counting(ttl=60)
    assert summary.key(request, 7) == (f"{__name__}:counting.<locals>.summary|"
                                      '[7,"en",false]')
    assert summary.key(request, 7) == summary.key(policy, exam_id=7, lang="en")
    first = summary(request, 7)
    assert summary(request, exam_id=7) == first == summary(policy, 7, "en")
    assert len(calls) == 1
    summary(request, 7, detail=True)
    summary(request, 8)
    assert len(calls) == 3
    assert policy.get(summary.key(request, 7)) == first
    versioned, _ = counting(namespace="v2")
    assert versioned.key(request, 7) == 'v2:counting.<locals>.summary|[7,"en",false]'
    assert versioned(request, 7)["calls"] == 1  # its own entry


def test_a_non_json_argument_is_a_named_type_error(script_request):
    request, _ = script_request
    summary, calls = counting()
    for bad in (datetime.date(2024, 1, 1), {1, 2}, {1: "a"}, float("nan"), object()):
        with pytest.raises(NotJSONArgument, match=r"summary: argument 'exam_id'") as info:
            summary(request, bad)
        assert isinstance(info.value, TypeError) and info.value.parameter == "exam_id"
    with pytest.raises(TypeError, match="needs a 'request' parameter"):
        cache_on_arguments()(lambda exam_id: exam_id)
    assert calls == []


def test_one_load_per_cold_key(policies, url):
    """Eight callers, on two processes' backends with Redis: the loader returns only once
    the seven others wait for it; it ran once and every caller got its value."""
    caches = [policies(url)] if url == "memory://" else [policies(url), policies(url)]
    calls: list = []

    def waiting() -> int:
        return sum(c.stats.snapshot()["lock_waits"] for c in caches)

    @cache_on_arguments(ttl=60)
    def slow(request, exam_id):
        calls.append(exam_id)
        wait_until(lambda: waiting() >= 7, timeout=20, message="seven waiters")
        return {"exam": exam_id}

    start = threading.Barrier(8)
    results: list = []

    def call(cache):
        start.wait(10)
        results.append(slow(cache, 5))

    threads = [threading.Thread(target=call, args=(caches[i % len(caches)],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert calls == [5] and results == [{"exam": 5}] * 8


def test_invalidate_by_arguments_or_tags_after_the_commit(script_request):
    request, _ = script_request
    summary, calls = counting(tags=lambda request, exam_id, lang="en", detail=False:
                              [f"exam:{exam_id}"])
    summary(request, 1)
    request.tm.begin()
    summary.invalidate(request, 1)
    request.tm.abort()
    assert summary(request, 1)["calls"] == 1  # the abort dropped it
    request.tm.begin()
    summary.invalidate(request, 1)
    assert len(calls) == 1
    request.tm.commit()
    assert summary(request, 1)["calls"] == 2
    request.cache.invalidate(tags=["exam:1"])
    assert summary(request, 1)["calls"] == 3
    summary(request, 2)
    request.cache.invalidate(tags=["exam:1"])
    assert summary(request, 2)["calls"] == 4  # exam 2 kept its entry
    with pytest.raises(NotJSONValue):
        cache_on_arguments()(lambda request: {1, 2})(request)


def test_a_method_finds_the_cache_on_self_request(script_request):
    request, policy = script_request
    loads = []

    class ExamViews:
        def __init__(self, request):
            self.request = request

        @cache_on_arguments()
        def questions(self, exam_id):
            loads.append(exam_id)
            return [exam_id, len(loads)]

    assert ExamViews(request).questions(3) == [3, 1]
    assert ExamViews(request).questions(3) == [3, 1]  # instances share entries
    assert policy.get(ExamViews(request).questions.key(3)) == [3, 1]
    ExamViews(request).questions.invalidate(3)
    assert ExamViews(request).questions(3) == [3, 2]


# -- signals -----------------------------------------------------------------------------------

def test_x_cache_says_bypass_when_the_cache_is_disabled(url):
    on = webtest.TestApp(make_app(url))
    off = webtest.TestApp(make_app(url, **{"examcache.enabled": "false"}))
    assert [on.get("/thing").headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    assert [off.get("/thing").headers["X-Cache"] for _ in range(2)] == ["BYPASS", "BYPASS"]
    assert off.get("/thing?undeclared=1").headers["X-Cache"] == "BYPASS"
    assert off.get("/thing").json == {"things": 4}  # the view ran every time
    for app in (on, off):
        get_policy(app.app.registry).close()


def test_web_metrics_say_the_consumer_counts_deliveries(url):
    app = webtest.TestApp(make_app(url, **{"examcache.metrics_path": "/metrics"}))
    families = {f.name: f.documentation
                for f in text_string_to_metric_families(app.get("/metrics").text)}
    for name in ("examcache_mail_deliveries", "examcache_mail_retries",
                 "examcache_mail_failures", "examcache_mail_delivery_latency_seconds"):
        assert "counted by the examcache-consumer process" in families[name], name
    assert "consumer" not in families["examcache_cache_hits"]
    get_policy(app.app.registry).close()
