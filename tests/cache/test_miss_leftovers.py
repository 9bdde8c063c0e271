"""Issue 18, finding 5: a request whose response is not stored leaves nothing behind.

A miss creates the versions of its tags (a later fill checks they did not change).  They
now live as long as the lease (``examcache.lock_timeout``) unless a fill stores under them,
which lengthens them past the stored value.  So 2,000 GETs of missing ids (404, never
stored) leave no key once ``lock_timeout`` has passed, on a single Redis and on a Cluster;
a stored value's versions outlive it; and an expired version, like a deleted one, never
makes an old value valid again (G2b).
"""
from __future__ import annotations

import time
import uuid

import pytest
import redis
from webtest import TestApp

from pyramid_examcache.cache import get_policy
from pyramid_examcache.cache.backends.base import Status
from pyramid_examcache.cache.backends.cluster import ClusterBackend
from pyramid_examcache.cache.backends.memory import MemoryBackend
from pyramid_examcache.cache.backends.redis import RedisBackend, glob_escape

from ..topologies import poll
from . import itemapp

MISSES = 2000
#: "a few dozen": what may remain under the prefix (the read-lease registry, a marker)
LEFT_AT_MOST = 30
LOCK_TIMEOUT = 1.0


def _count(nodes: list[redis.Redis], prefix: str) -> int:
    match = glob_escape(prefix) + "*"
    return sum(1 for node in nodes for _ in node.scan_iter(match=match, count=1000))


def _pttl(nodes: list[redis.Redis], name: str) -> int:
    """``PTTL`` of ``name`` on whichever node holds it (-2: nowhere)."""
    for node in nodes:
        try:
            ttl = node.pttl(name)
        except redis.exceptions.ResponseError:  # MOVED: another node's slot
            continue
        if ttl != -2:
            return ttl
    return -2


def _wipe(nodes: list[redis.Redis], prefix: str) -> None:
    for node in nodes:
        for name in list(node.scan_iter(match=glob_escape(prefix) + "*", count=1000)):
            node.delete(name)  # one by one: on a cluster node they are in different slots
        node.close()


@pytest.fixture(params=["redis", "cluster"])
def store(request, redis_url):
    """(cache URL, a private key prefix, a plain client on every data node)."""
    prefix = f"examcache-test:{uuid.uuid4().hex[:12]}:"
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        url = cluster.url
        nodes = [redis.Redis(host="127.0.0.1", port=p) for p in cluster.ports]
    else:
        url, nodes = redis_url, [redis.Redis.from_url(redis_url)]
    yield url, prefix, nodes
    _wipe(nodes, prefix)


@pytest.fixture
def db(cache_pg_url):
    itemapp.create_schema(cache_pg_url)
    return cache_pg_url


def test_two_thousand_misses_leave_no_key_once_the_lease_is_gone(db, store):
    url, prefix, nodes = store
    wsgi = itemapp.make_app(db, **{"examcache.redis_url": url, "examcache.key_prefix": prefix,
                                   "examcache.lock_timeout": str(LOCK_TIMEOUT),
                                   "examcache.default_ttl": "7200"})
    app = TestApp(wsgi)
    try:
        for i in range(MISSES):
            app.get(f"/items/{100_000 + i}", status=404)
        last = f"{prefix}t:@key:item:{100_000 + MISSES - 1}"
        # the misses do create tag versions (the lease protocol needs them) ...
        assert _pttl(nodes, last) > 0
        right_after = _count(nodes, prefix)
        started = time.monotonic()
        counts = []

        def few() -> bool:
            counts.append(_count(nodes, prefix))
            return counts[-1] <= LEFT_AT_MOST

        # ... which go with the lease: poll (generous deadline) for what outlives it
        try:
            poll(few, 30, f"at most {LEFT_AT_MOST} keys under the prefix")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {counts[-1]} keys left ({right_after} right after "
                                 f"the misses)") from None
        left = counts[-1]
        print(f"\n{MISSES} misses: {right_after} keys right after, {left} after "
              f"{time.monotonic() - started:.2f}s (lock_timeout {LOCK_TIMEOUT}s)")
        assert left <= LEFT_AT_MOST
        # a stored response still is: the cache works as before
        assert app.get("/items/1").headers["X-Cache"] == "MISS"
        assert app.get("/items/1").headers["X-Cache"] == "HIT"
    finally:
        wsgi.registry["test.engine"].dispose()
        get_policy(wsgi.registry).close()


# -- the backends themselves ----------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Setup:
    """A backend, ``gone(tag)``: is the tag's version gone, ``expire(tag)``: make it
    expire now (and wait until it has), ``pass_lease()``: let a lease's lifetime pass."""

    def __init__(self, backend, gone, expire, pass_lease) -> None:
        self.backend, self.gone, self.expire, self.pass_lease = backend, gone, expire, pass_lease


LEASE = 1.0  # seconds: the lease_ttl (lock_timeout) the backend tests use


@pytest.fixture(params=["memory", "redis", "redis-tracking", "cluster"])
def setup(request, redis_url, redis_prefix):
    if request.param == "memory":
        clock = Clock()
        backend = MemoryBackend(clock=clock)

        def forward() -> None:
            clock.now += LEASE + 0.5

        def drop(tag: str) -> None:  # what an expiry is to this backend: the version is gone
            backend._tags.pop(tag)

        yield Setup(backend, lambda tag: backend._tag_version(tag) is None, drop, forward)
        return
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        backend = ClusterBackend(cluster.url, prefix=redis_prefix)
    else:
        backend = RedisBackend(redis_url, prefix=redis_prefix, near_cache_bytes=1 << 20,
                               tracking=request.param == "redis-tracking")
        if backend._stream is not None:
            assert backend._stream.wait_healthy(10)
    client = backend.client

    def gone(tag: str) -> bool:
        return not client.exists(f"{redis_prefix}t:{tag}")  # (an access expires it lazily)

    def expire(tag: str) -> None:
        client.pexpire(f"{redis_prefix}t:{tag}", 1)
        poll(lambda: gone(tag), 10, f"the version of {tag} to expire")

    def pass_lease() -> None:  # a version no fill stored under is gone: the lease's time passed
        found = backend.lookup("clock", "c", LEASE, 60, ("clock-tag",))
        backend.release("clock", "c")
        assert found.status is Status.LEASED
        poll(lambda: gone("clock-tag"), 10 + LEASE, "a lease's lifetime to pass")

    yield Setup(backend, gone, expire, pass_lease)
    backend.clear()
    backend.close()


def test_a_stored_values_tag_versions_outlive_it(setup):
    b = setup.backend
    found = b.lookup("k", "a", LEASE, 30, ("T",))
    assert b.fill("k", "a", b"v", 30, ("T",), found.versions)
    missed = b.lookup("gone", "m", LEASE, 30, ("U",))  # a miss whose response is not stored
    b.release("gone", "m")
    if isinstance(b, (RedisBackend, ClusterBackend)):
        client, p = b.client, b.prefix
        value_key = f"{p}v:k" if isinstance(b, RedisBackend) else f"{p}v:{{k}}"
        assert client.pttl(f"{p}t:T") >= client.pttl(value_key) > 25_000
        assert 0 < client.pttl(f"{p}t:U") <= LEASE * 1000
    setup.pass_lease()
    assert setup.gone("U")
    assert not setup.gone("T")
    assert b.get("k", ("T",)) == b"v"
    again = b.lookup("k", "b", LEASE, 30, ("T",))
    assert again.status is Status.HIT and again.value == b"v"
    fresh = b.lookup("gone", "n", LEASE, 30, ("U",))
    assert fresh.status is Status.LEASED and fresh.versions != missed.versions


def test_an_expired_tag_version_never_brings_an_old_value_back(setup):
    b = setup.backend
    found = b.lookup("k", "a", 5, 60, ("T",))
    assert found.status is Status.LEASED
    assert b.fill("k", "a", b"old", 60, ("T",), found.versions)
    assert b.get("k", ("T",)) == b"old"
    # two readers lease other keys under T's current version, and load (old data)
    first = b.lookup("k1", "r1", 5, 60, ("T",))
    second = b.lookup("k2", "r2", 5, 60, ("T",))
    assert first.versions == second.versions == found.versions
    setup.expire("T")
    # the value stored under the expired version is a miss (read, and lookup) ...
    assert b.get("k", ("T",)) is None
    # ... a fill racing the expiry is refused, and does not bring the version back
    assert not b.fill("k1", "r1", b"old1", 60, ("T",), first.versions)
    assert setup.gone("T")
    assert b.get("k1", ("T",)) is None
    again = b.lookup("k", "b", 5, 60, ("T",))
    assert again.status is Status.LEASED and again.versions != found.versions
    # ... and so is one that comes after a new version exists
    assert not b.fill("k2", "r2", b"old2", 60, ("T",), second.versions)
    assert b.get("k2", ("T",)) is None
    assert b.fill("k", "b", b"new", 60, ("T",), again.versions)
    assert b.get("k", ("T",)) == b"new"
