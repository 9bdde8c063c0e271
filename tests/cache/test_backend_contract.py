"""One contract, every backend: leases, tag versions, TTLs, bytes, prefixes."""
from __future__ import annotations

import time

import pytest

from pyramid_examcache.cache.backends.base import Status
from pyramid_examcache.cache.backends.cluster import ClusterBackend
from pyramid_examcache.cache.backends.memory import MemoryBackend
from pyramid_examcache.cache.backends.redis import RedisBackend


def topology_backend(url: str, prefix: str, **kw):
    """The backend ``make_backend`` builds for ``url`` (Redis, Sentinel or Cluster)."""
    if "+cluster://" in url:
        return ClusterBackend(url, prefix=prefix, **kw)
    return RedisBackend(url, prefix=prefix, **kw)


@pytest.fixture(params=["memory", "redis", "redis-tracking", "sentinel", "cluster"])
def backend(request):
    if request.param == "memory":
        b = MemoryBackend()
    elif request.param == "redis-tracking":  # issue 11: the tracked near cache
        b = RedisBackend(request.getfixturevalue("redis_url"),
                         prefix=request.getfixturevalue("redis_prefix"),
                         near_cache_bytes=1 << 20, tracking=True)
        assert b._stream.wait_healthy(10)
    else:
        prefix = request.getfixturevalue("redis_prefix")
        url = (request.getfixturevalue("redis_url") if request.param == "redis"
               else request.getfixturevalue(f"redis_{request.param}").url)
        b = topology_backend(url, prefix)
    yield b
    b.close()


def lease(backend, key="k", token="t1", lease_ttl=5.0, ttl=60, tags=()):
    return backend.lookup(key, token, lease_ttl, ttl, tags)


def test_cold_key_is_leased_to_the_first_and_others_wait(backend):
    first = lease(backend, token="a")
    assert first.status is Status.LEASED
    assert lease(backend, token="b").status is Status.WAIT


def test_fill_by_the_holder_is_a_hit_for_everyone(backend):
    lease(backend, token="a")
    assert backend.fill("k", "a", b"v1", 60)
    found = lease(backend, token="b")
    assert found.status is Status.HIT and found.value == b"v1"
    assert backend.get("k") == b"v1"


def test_fill_without_the_lease_is_refused(backend):
    lease(backend, token="a")
    assert not backend.fill("k", "intruder", b"x", 60)
    assert not backend.fill("other", "a", b"x", 60)
    assert backend.get("k") is None


def test_invalidation_during_a_load_refuses_the_stale_fill(backend):
    """The G2 race: loaded before the commit, filled after its invalidation."""
    lease(backend, token="reader")
    backend.invalidate(["k"])
    assert not backend.fill("k", "reader", b"old row", 60)
    assert backend.get("k") is None
    nxt = lease(backend, token="reader2")
    assert nxt.status is Status.LEASED


def test_invalidate_deletes_values(backend):
    lease(backend, token="a")
    backend.fill("k", "a", b"v", 60)
    backend.invalidate(["k", "never-stored"])
    assert backend.get("k") is None
    assert lease(backend, token="b").status is Status.LEASED


def test_tags_invalidate_every_key_stored_under_them(backend):
    for key in ("a", "b"):
        found = lease(backend, key=key, token=key, tags=("exam:1",))
        assert len(found.versions) == 1
        assert backend.fill(key, key, key.encode(), 60, ("exam:1",), found.versions)
    found = lease(backend, key="c", token="c", tags=("exam:2",))
    backend.fill("c", "c", b"c", 60, ("exam:2",), found.versions)
    backend.invalidate(tags=["exam:1"])
    assert backend.get("a") is None and backend.get("b") is None
    assert backend.get("c") == b"c"


def test_tag_invalidated_between_lookup_and_fill_refuses_the_fill(backend):
    found = lease(backend, token="r", tags=("exam:1",))
    backend.invalidate(tags=["exam:1"])
    assert not backend.fill("k", "r", b"old", 60, ("exam:1",), found.versions)
    assert backend.get("k") is None


def test_new_tag_versions_are_fresh_so_lost_metadata_never_resurrects(backend):
    found = lease(backend, token="a", tags=("t",))
    backend.fill("k", "a", b"v", 60, ("t",), found.versions)
    # lose the tag metadata (restart, eviction, expiry), then use the tag again
    backend.invalidate(tags=["t"])
    again = lease(backend, key="k2", token="b", tags=("t",))
    assert again.versions != found.versions
    assert backend.get("k") is None


def test_release_tells_others_to_bypass_instead_of_queueing(backend):
    lease(backend, token="a")
    backend.release("k", "a")
    assert lease(backend, token="b").status is Status.BYPASS
    backend.release("k", "not-the-holder")  # harmless
    backend.invalidate(["k"])
    assert lease(backend, token="c").status is Status.LEASED


def test_lease_expires_so_a_killed_loader_leaves_no_stuck_key(backend):
    lease(backend, token="dead", lease_ttl=0.05)
    time.sleep(0.12)
    assert lease(backend, token="alive").status is Status.LEASED
    assert not backend.fill("k", "dead", b"late", 60)  # lost to its timeout: refused, no error
    assert backend.fill("k", "alive", b"fresh", 60)
    assert backend.get("k") == b"fresh"


def test_values_expire_after_their_ttl(backend):
    lease(backend, token="a")
    backend.fill("k", "a", b"v", 1)
    assert backend.get("k") == b"v"
    time.sleep(1.2)
    assert backend.get("k") is None


def test_bytes_round_trip_exactly(backend):
    blob = bytes(range(256)) * 200 + "é✓".encode()
    lease(backend, token="a")
    backend.fill("k", "a", blob, 60)
    assert lease(backend, token="b").value == blob


def test_clear_empties_the_backend(backend):
    lease(backend, token="a")
    backend.fill("k", "a", b"v", 60)
    backend.clear()
    assert backend.get("k") is None


def test_redis_keys_live_under_the_prefix_only(redis_url, redis_prefix):
    import redis

    b = RedisBackend(redis_url, prefix=redis_prefix)
    found = b.lookup("exam:1:questions", "a", 5, 60, ("exam:1",))
    b.fill("exam:1:questions", "a", b"v", 60, ("exam:1",), found.versions)
    client = redis.Redis.from_url(redis_url)
    mine = sorted(k.decode() for k in client.scan_iter(match=redis_prefix + "*"))
    assert mine == [f"{redis_prefix}t:exam:1", f"{redis_prefix}v:exam:1:questions"]
    assert client.ttl(f"{redis_prefix}v:exam:1:questions") > 0
    assert client.ttl(f"{redis_prefix}t:exam:1") >= 59  # tag metadata expires too
    b.close()


def test_tag_bookkeeping_is_one_small_key_per_tag(redis_url, redis_prefix):
    """No per-tag member sets that grow without bound (the cacheops 72M-member set)."""
    import redis

    b = RedisBackend(redis_url, prefix=redis_prefix)
    for i in range(300):
        found = b.lookup(f"k{i}", "a", 5, 60, ("hot",))
        b.fill(f"k{i}", "a", b"v", 60, ("hot",), found.versions)
    client = redis.Redis.from_url(redis_url)
    assert client.type(f"{redis_prefix}t:hot") == b"string"
    assert client.strlen(f"{redis_prefix}t:hot") < 64
    b.invalidate(tags=["hot"])
    assert all(b.get(f"k{i}") is None for i in range(300))
    b.close()


def test_lookup_never_hits_a_value_whose_tag_was_invalidated(backend):
    found = lease(backend, token="a", tags=("t1", "t2"))
    backend.fill("k", "a", b"v", 60, ("t1", "t2"), found.versions)
    assert lease(backend, token="b", tags=("t1", "t2")).status is Status.HIT
    backend.invalidate(tags=["t2"])
    assert lease(backend, token="c", tags=("t1", "t2")).status is Status.LEASED


def test_lookup_validates_the_stored_tags_even_when_called_with_other_tags(backend):
    found = lease(backend, token="a", tags=("t1",))
    backend.fill("k", "a", b"v", 60, ("t1",), found.versions)
    assert lease(backend, token="b", tags=()).status is Status.HIT
    backend.invalidate(tags=["t1"])
    assert lease(backend, token="c", tags=()).status is Status.LEASED


@pytest.fixture
def two_processes(topology, redis_prefix):
    """Two backends with near caches on one Redis (each topology), as two processes would be."""
    a = topology_backend(topology.url, redis_prefix, near_cache_bytes=1 << 20)
    b = topology_backend(topology.url, redis_prefix, near_cache_bytes=1 << 20)
    yield a, b
    a.close(), b.close()


def test_near_cache_serves_only_what_redis_holds_now(two_processes):
    a, b = two_processes
    found = a.lookup("k", "a1", 5, 60, ("t",))
    assert a.fill("k", "a1", b"v1", 60, ("t",), found.versions)
    assert a.lookup("k", "x", 5, 60, ("t",)).value == b"v1"  # from the near cache
    # the other process invalidates and refills with new data
    b.invalidate(["k"])
    found = b.lookup("k", "b1", 5, 60, ("t",))
    assert b.fill("k", "b1", b"v2", 60, ("t",), found.versions)
    assert a.lookup("k", "y", 5, 60, ("t",)).value == b"v2"
    assert a.lookup("k", "z", 5, 60, ("t",)).value == b"v2"
    # a tag invalidated elsewhere: no hit from the near copy
    b.invalidate(tags=["t"])
    assert a.lookup("k", "w", 5, 60, ("t",)).status is Status.LEASED


def test_near_cache_is_bounded():
    from pyramid_examcache.cache.backends.near import ByteLRU

    near = ByteLRU(max_bytes=1000)
    for i in range(50):
        near.put(f"k{i}", b"s", b"x" * 100)
    assert len(near) <= 10
    assert near.get("k49") is not None and near.get("k0") is None
    near.put("huge", b"s", b"x" * 600)  # larger than a quarter of the budget: not kept
    assert near.get("huge") is None


def test_get_validates_whatever_tags_the_caller_expects(backend):
    found = lease(backend, token="a", tags=("t",))
    backend.fill("k", "a", b"v", 60, ("t",), found.versions)
    assert backend.get("k", ("t",)) == b"v"
    assert backend.get("k", ("other",)) == b"v"  # a wrong hint still answers right
    assert backend.get("k") == b"v"
    backend.invalidate(tags=["t"])
    assert backend.get("k", ("t",)) is None
    assert backend.get("k") is None
