"""Unit tests of the policy: get-or-set, stampede, fail-open, breaker, transactions."""
from __future__ import annotations

import threading
import time

import pytest
import transaction
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.testing import DummyRequest

from pyramid_examcache.cache.backends.memory import MemoryBackend
from pyramid_examcache.cache.policy import CachePolicy, RequestCache
from pyramid_examcache.settings import CacheSettings, parse_cache_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class BrokenBackend(MemoryBackend):
    """A store that can be switched to failing like an unreachable Redis."""

    errors = (ConnectionError,)

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    def _check(self):
        self.calls += 1
        if self.down:
            raise ConnectionError("store down")

    def lookup(self, *a, **kw):
        self._check()
        return super().lookup(*a, **kw)

    def fill(self, *a, **kw):
        self._check()
        return super().fill(*a, **kw)

    def invalidate(self, *a, **kw):
        self._check()
        return super().invalidate(*a, **kw)


def test_get_or_set_calls_the_creator_once_and_round_trips_json():
    policy = CachePolicy(MemoryBackend())
    calls = []

    def creator():
        calls.append(1)
        return {"a": [1, 2.5, "é"], "b": None, "t": (1, 2)}

    first = policy.get_or_set("k", creator)
    second = policy.get_or_set("k", creator)
    assert first == second == {"a": [1, 2.5, "é"], "b": None, "t": [1, 2]}
    assert len(calls) == 1
    stats = policy.stats.snapshot()
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["loads"] == 1


def test_values_that_are_not_json_are_refused_and_release_the_lease():
    policy = CachePolicy(MemoryBackend())
    with pytest.raises(TypeError):
        policy.get_or_set("k", lambda: object())
    assert policy.get_or_set("k", lambda: 1) == 1  # not stuck behind a dead lease


def test_a_creator_exception_propagates_and_releases_the_lease():
    policy = CachePolicy(MemoryBackend())

    def boom():
        raise LookupError("db")

    with pytest.raises(LookupError):
        policy.get_or_set("k", boom)
    assert policy.get_or_set("k", lambda: "ok") == "ok"


@pytest.mark.parametrize("ttl", [0, -5, 1.5, "10", True])
def test_bad_ttl_is_refused(ttl):
    with pytest.raises(ValueError):
        CachePolicy(MemoryBackend()).get_or_set("k", lambda: 1, ttl=ttl)


@pytest.mark.parametrize("key", ["", "a\x1fb", "x" * 2000, None])
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError):
        CachePolicy(MemoryBackend()).get_or_set(key, lambda: 1)


def test_fifty_threads_on_a_cold_key_load_once():
    policy = CachePolicy(MemoryBackend())
    loads = []
    barrier = threading.Barrier(50)
    results = []

    def creator():
        loads.append(1)
        time.sleep(0.2)
        return {"v": 42}

    errors = []

    def worker():
        try:
            barrier.wait(30)
            results.append(policy.get_or_set("cold", creator))
        except BaseException as exc:  # noqa: BLE001 -- re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors[:3]
    assert len(loads) == 1
    assert results == [{"v": 42}] * 50
    assert policy.stats.snapshot()["lock_waits"] == 49


def test_waiters_give_up_after_wait_timeout_and_load_themselves_without_storing():
    settings = CacheSettings(lock_timeout=5, wait_timeout=0.1)
    policy = CachePolicy(MemoryBackend(), settings)
    backend = policy.backend
    backend.lookup("k", "stuck-holder", 5, 60, ())  # someone holds the lease and hangs
    started = time.monotonic()
    assert policy.get_or_set("k", lambda: "mine") == "mine"
    assert 0.09 <= time.monotonic() - started < 1.0
    assert backend.get("k") is None
    assert policy.stats.snapshot()["wait_timeouts"] == 1


def test_backend_down_fails_open_and_the_breaker_stops_calling_it():
    clock = FakeClock()
    backend = BrokenBackend()
    policy = CachePolicy(backend, CacheSettings(breaker_threshold=3, breaker_reset=2.0), clock=clock)
    backend.down = True
    for i in range(10):
        assert policy.get_or_set("k", lambda: i) == i
    assert backend.calls == 3  # then the breaker is open: no more timeouts paid
    assert policy.breaker.state == "open"
    clock.now += 2.1
    backend.down = False
    assert policy.get_or_set("k", lambda: "fresh") == "fresh"  # the probe closes it
    assert policy.breaker.state == "closed"
    assert policy.get_or_set("k", lambda: "other") == "fresh"  # hits resume


def test_an_invalidation_that_failed_is_applied_before_the_cache_is_read_again():
    clock = FakeClock()
    backend = BrokenBackend()
    policy = CachePolicy(backend, CacheSettings(breaker_threshold=1, breaker_reset=1.0), clock=clock)
    policy.get_or_set("k", lambda: "old")
    backend.down = True
    policy.invalidate_now(["k"])
    assert policy.stats.snapshot()["deferred"] == 1
    backend.down = False
    # breaker still open: served from the creator, not from the (stale) cache
    assert policy.get_or_set("k", lambda: "new") == "new"
    clock.now += 1.5
    assert policy.get_or_set("k", lambda: "new") == "new"
    assert backend.get("k") == b'j"new"'


# -- request-bound: transactions ---------------------------------------------------
def tm_request(policy):
    """A request inside an explicit transaction manager, like pyramid_tm sets up."""
    request = DummyRequest()
    request.tm = transaction.TransactionManager(explicit=True)
    request.environ["tm.active"] = True
    request.tm.begin()
    return request, RequestCache(policy, request)


def test_invalidate_inside_a_transaction_waits_for_the_commit():
    policy = CachePolicy(MemoryBackend())
    policy.get_or_set("k", lambda: "old")
    request, cache = tm_request(policy)
    cache.invalidate("k")
    assert policy.backend.get("k") == b'j"old"'
    request.tm.commit()
    assert policy.backend.get("k") is None


def test_invalidate_is_dropped_on_abort():
    policy = CachePolicy(MemoryBackend())
    policy.get_or_set("k", lambda: "old")
    request, cache = tm_request(policy)
    cache.invalidate("k", tags=["t"])
    request.tm.abort()
    assert policy.backend.get("k") == b'j"old"'


class FailingVote:
    """A data manager whose vote fails: the commit fails after our hook is registered."""

    transaction_manager = None

    def abort(self, txn): pass
    def tpc_begin(self, txn): pass
    def commit(self, txn): pass
    def tpc_vote(self, txn): raise RuntimeError("vote failed")
    def tpc_finish(self, txn): pass
    def tpc_abort(self, txn): pass
    def sortKey(self): return "zz-failing"


def test_invalidate_is_dropped_when_the_commit_fails():
    policy = CachePolicy(MemoryBackend())
    policy.get_or_set("k", lambda: "old")
    request, cache = tm_request(policy)
    cache.invalidate("k")
    request.tm.get().join(FailingVote())
    with pytest.raises(RuntimeError, match="vote failed"):
        request.tm.commit()
    request.tm.abort()
    assert policy.backend.get("k") == b'j"old"'


def test_outside_a_transaction_invalidate_applies_at_once():
    policy = CachePolicy(MemoryBackend())
    policy.get_or_set("k", lambda: "old")
    RequestCache(policy, DummyRequest()).invalidate("k")
    assert policy.backend.get("k") is None


def test_a_dirty_transaction_neither_reads_nor_stores():
    policy = CachePolicy(MemoryBackend())
    policy.get_or_set("k", lambda: "cached")
    request, cache = tm_request(policy)
    cache.mark_dirty()
    assert cache.get_or_set("k", lambda: "own write") == "own write"
    assert cache.get_or_set("k2", lambda: "x") == "x"
    assert policy.backend.get("k2") is None
    request.tm.commit()
    assert cache.get_or_set("k2", lambda: "y") == "y"  # next transaction is clean
    assert policy.backend.get("k2") == b'j"y"'


# -- configuration ----------------------------------------------------------------------
@pytest.mark.parametrize("name,value", [
    ("examcache.redis_url", "ftp://example.com"),
    ("examcache.redis_url", "localhost:6379"),
    ("examcache.redis_url", "redis://:abc"),
    ("examcache.redis_url", "redis://host:6379/notadb"),
    ("examcache.default_ttl", "-5"),
    ("examcache.default_ttl", "ten"),
    ("examcache.default_ttl", "0"),
    ("examcache.socket_timeout", "-1"),
    ("examcache.lock_timeout", "0"),
    ("examcache.key_prefix", "has space"),
    ("examcache.enabled", "perhaps"),
])
def test_bad_settings_raise_configuration_error_naming_the_setting(name, value):
    with pytest.raises(ConfigurationError) as err:
        parse_cache_settings({name: value})
    assert name in str(err.value)
    with pytest.raises(ConfigurationError) as err:
        with Configurator(settings={name: value}) as config:
            config.include("pyramid_examcache.cache")
    assert name in str(err.value)


def test_good_settings_are_converted():
    s = parse_cache_settings({"examcache.redis_url": "redis://127.0.0.1:6379/3",
                              "examcache.default_ttl": "60", "examcache.socket_timeout": "0.1",
                              "examcache.lock_timeout": "2", "examcache.key_prefix": "app:"})
    assert (s.default_ttl, s.socket_timeout, s.lock_timeout, s.wait_timeout, s.key_prefix) == \
        (60, 0.1, 2.0, 2.0, "app:")


@pytest.mark.parametrize("options,message", [
    ({"cache": "x:{id!r}"}, "cache="),
    ({"cache": "x:{id}", "cache_ttl": -1}, "cache_ttl"),
    ({"cache": "x:{id}", "cache_ttl": "60"}, "cache_ttl"),
    ({"cache": "x:{id}", "cache_vary": ("not an attr",)}, "cache_vary"),
])
def test_bad_view_options_fail_at_configuration_time(options, message):
    with pytest.raises(ConfigurationError) as err:
        with Configurator() as config:
            config.include("pyramid_examcache.cache")
            config.add_route("r", "/r/{id}")
            config.add_view(lambda r: {}, route_name="r", renderer="json", **options)
            config.make_wsgi_app()
    assert message in str(err.value)


def test_tags_given_as_an_iterator_are_stored_and_invalidate():
    # validating the tags must not use up an iterator: the value is stored under them
    policy = CachePolicy(MemoryBackend())
    calls = []

    def creator():
        calls.append(1)
        return len(calls)

    assert policy.get_or_set("exam:1", creator, tags=(t for t in ["exam-1"])) == 1
    assert policy.get_or_set("exam:1", creator, tags=("exam-1",)) == 1
    assert policy.invalidate_now(tags=["exam-1"])
    assert policy.get_or_set("exam:1", creator, tags=("exam-1",)) == 2
