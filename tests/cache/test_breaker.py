"""The circuit breaker and the deferred invalidations, driven by an injected
clock (no sleeps): every path that takes the half-open probe reports back."""
from __future__ import annotations

import pytest

from pyramid_examcache.breaker import Breaker, BreakerOpen
from pyramid_examcache.cache.deferred import DeferredInvalidations
from pyramid_examcache.cache.policy import CHUNK, CachePolicy
from pyramid_examcache.settings import CacheSettings

from .test_policy import BrokenBackend, FakeClock


def fail():
    raise ConnectionError("down")


def test_the_breaker_opens_after_threshold_failures_and_lets_one_probe_through():
    clock = FakeClock()
    breaker = Breaker(threshold=2, reset_after=1.0, errors=(ConnectionError,), clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    assert breaker.state == "open"
    with pytest.raises(BreakerOpen):
        breaker.call(lambda: "not called")
    clock.now += 1.1
    assert breaker.state == "half-open"
    seen = []

    def probe():  # while the probe runs, a second caller is refused
        with pytest.raises(BreakerOpen):
            breaker.call(lambda: "concurrent")
        seen.append("probed")
        return "ok"

    assert breaker.call(probe) == "ok"
    assert seen == ["probed"] and breaker.state == "closed"


def test_a_failed_probe_reopens_for_a_full_period():
    clock = FakeClock()
    breaker = Breaker(threshold=1, reset_after=1.0, errors=(ConnectionError,), clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.now += 1.1
    with pytest.raises(ConnectionError):
        breaker.call(fail)  # the probe
    assert breaker.state == "open"
    clock.now += 0.5
    with pytest.raises(BreakerOpen):
        breaker.call(lambda: None)


def test_an_unexpected_exception_in_a_probe_hands_the_probe_back():
    clock = FakeClock()
    breaker = Breaker(threshold=1, reset_after=1.0, errors=(ConnectionError,), clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.now += 1.1
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["bug"])  # no verdict on the backend
    assert breaker.call(lambda: "next probe") == "next probe"
    assert breaker.state == "closed"


def broken_policy(clock, threshold=1, reset=1.0):
    backend = BrokenBackend()
    policy = CachePolicy(backend, CacheSettings(breaker_threshold=threshold, breaker_reset=reset),
                         clock=clock)
    return backend, policy


def test_the_background_retry_before_any_request_closes_the_breaker():
    """The fault order that once left the breaker open for good: Redis stalls,
    an invalidation is deferred, Redis returns, and the background retry runs
    before the next request."""
    clock = FakeClock()
    backend, policy = broken_policy(clock)
    policy.get_or_set("k", lambda: "old")
    backend.down = True
    assert policy.get_or_set("k", lambda: "db") == "db"  # fails open, the breaker opens
    assert policy.breaker.state == "open"
    assert policy.invalidate_now(["k"]) is False  # deferred
    backend.down = False
    clock.now += 1.1
    policy._retry()  # what the retry timer runs
    assert policy.breaker.state == "closed"
    assert not policy.deferred
    assert backend.get("k") is None
    assert policy.get_or_set("k", lambda: "new") == "new"
    calls = backend.calls
    assert policy.get_or_set("k", lambda: "not called") == "new"  # a hit
    assert backend.calls == calls + 1
    policy.close()


def test_a_failed_background_retry_keeps_the_invalidation_and_reopens():
    clock = FakeClock()
    backend, policy = broken_policy(clock)
    policy.get_or_set("k", lambda: "old")
    backend.down = True
    policy.invalidate_now(["k"])
    clock.now += 1.1
    assert policy.flush_pending() is False
    assert policy.breaker.state == "open"
    assert len(policy.deferred) == 1
    # meanwhile reads never come from the (stale) cache
    backend.down = False
    assert policy.get_or_set("k", lambda: "db") == "db"
    clock.now += 1.1
    assert policy.get_or_set("k", lambda: "new") == "new"  # applies first, then reads
    assert policy.get_or_set("k", lambda: "x") == "new"
    policy.close()


def test_an_invalidation_deferred_again_while_a_batch_is_applied_is_kept():
    clock = FakeClock()
    backend, policy = broken_policy(clock)
    policy.deferred.add(["k"], [])
    real = backend.invalidate

    def invalidate(keys=(), tags=()):
        real(keys, tags)
        policy.deferred.add(["k"], [])  # a later commit's invalidation of k, deferred meanwhile

    backend.invalidate = invalidate
    assert policy.flush_pending() is True
    assert len(policy.deferred) == 1, "the newer deferral of k was dropped"
    policy.close()


def test_invalidations_go_out_in_chunks_and_only_the_unsent_ones_are_deferred():
    clock = FakeClock()
    backend, policy = broken_policy(clock, threshold=5)
    sizes = []
    real = backend.invalidate

    def invalidate(keys=(), tags=()):
        # each key travels with its implicit view tag (@key:<key>); count the caller's names
        assert [t for t in tags if t.startswith("@key:")] == [f"@key:{k}" for k in keys]
        sizes.append(len(keys) + len([t for t in tags if not t.startswith("@key:")]))
        if len(sizes) == 3:
            raise ConnectionError("timed out on the third chunk")
        real(keys, tags)

    backend.invalidate = invalidate
    keys = [f"k{i}" for i in range(3 * CHUNK + 10)]
    assert policy.invalidate_now(keys, tags=["t"]) is False
    assert sizes == [CHUNK, CHUNK, CHUNK]
    assert len(policy.deferred) == len(keys) - 2 * CHUNK + 1
    policy.close()


def test_the_deferred_queue_degrades_to_clear_all_when_too_many():
    queue = DeferredInvalidations(max_items=3)
    queue.add(["a", "b"], ["t"])
    queue.add(["c"], [])
    keys, tags, clear_all = queue.take()
    assert clear_all and not keys and not tags
    assert not queue


def test_a_fill_is_refused_while_this_process_owes_an_invalidation():
    """A loader took its lease, then a commit's invalidation could not be sent
    (deferred), then the store came back: the loader's value may predate that
    commit, so it must not be stored for other processes to read."""
    clock = FakeClock()
    backend, policy = broken_policy(clock, threshold=3)

    def load():
        backend.down = True
        assert policy.invalidate_now(["k"]) is False  # deferred
        backend.down = False
        return "read before the commit"

    assert policy.get_or_set("k", load) == "read before the commit"
    assert backend.get("k") is None
    policy.close()
