"""G2 and G3 over real HTTP (waitress), real PostgreSQL and a shared Redis,
in threads of one process and across processes.

The naive cache-aside of the seed runs through the same race and must be
caught: that proves the race test can see a stale set at all."""
from __future__ import annotations

import threading
import time

import pytest

from pyramid_examcache.cache import get_policy

from ..mail.support import wait_until
from . import itemapp
from .proxy import DOWN, RespProxy
from .servers import Client, process_servers, race, thread_server

LOAD_DELAY = 0.005  # widens the load window equally for both caches
#: the G2/G3 tests run twice: anonymous readers, and logged-in readers of the
#: view declared ``cache_public=True`` (they read and fill the shared key, H1)
#: ... and on each Redis topology (Sentinel, Cluster: tests/topologies.py), anonymous readers
#: (the defaults on one Redis: a tracked near cache, a barrier per read) ... and with read
#: leases (``near_cache = lease``, the "tracking" variant), logged-in and public
#: ... and through the WSGI fast path (``pyramid_examcache.fast_path``, read leases: "fast";
#: the default near cache, its hits served after the barrier: "fast-barrier").  Early hits
#: are on by default, so the barrier variants' hits come from the early-hit tween
#: (``peek_after_barrier``), or from the fast path in "fast-barrier" -- and on Sentinel and
#: Cluster in "sentinel-fast" and "cluster-fast" (after the fenced barrier)
VARIANTS = [(False, "redis"), (True, "redis"), (False, "sentinel"), (False, "cluster"),
            (True, "tracking"), (True, "fast-barrier"), (True, "fast"),
            (False, "sentinel-fast"), (False, "cluster-fast")]
VARIANT_IDS = ["anonymous", "public-logged-in", "sentinel", "cluster", "tracking",
               "fast-barrier", "fast", "sentinel-fast", "cluster-fast"]
#: the variants whose hits may come from the WSGI fast path (a cold key never does)
SLOW_PATH = [i for i, (_, name) in enumerate(VARIANTS) if "fast" not in name]
PUBLIC = pytest.mark.parametrize(("public", "topology"), VARIANTS, ids=VARIANT_IDS,
                                 indirect=["topology"])
READER = {"Authorization": "Bearer a-logged-in-reader"}


def reader_headers(public: bool) -> dict | None:
    return READER if public else None


#: Redis is healthy in these tests (its faults: test_lease_faults, test_fail_open): a socket
#: timeout no scheduling delay of a busy 2-core machine reaches (at the default 0.25 s, 200
#: threads under two pytest workers timed out: the writer's invalidations were deferred, and
#: readers holding leases served the old value -- G6's bound, not the G2 these tests prove)
HEALTHY = {"examcache.socket_timeout": "2"}


def public_settings(public: bool) -> dict:
    return {"test.cache_public": "true", **HEALTHY} if public else dict(HEALTHY)


def check_public_hits(public: bool, caches: list) -> None:
    """With logged-in readers, hits prove they were served from (and filled) the cache."""
    if public:
        assert caches.count("HIT") > 0, "logged-in readers never hit the public view"


@pytest.fixture
def db(cache_pg_url):
    itemapp.create_schema(cache_pg_url)
    return cache_pg_url


def topology_url(request, name: str) -> str:
    return (request.getfixturevalue("redis_url")
            if name in ("redis", "tracking", "fast", "fast-barrier")
            else request.getfixturevalue(f"redis_{name.removesuffix('-fast')}").url)


def topology_settings(name: str) -> dict:
    if name == "fast":
        return {"examcache.near_cache": "lease", "test.fast_path": "true"}
    if name.endswith("-barrier") or name.endswith("-fast"):  # the default near cache
        return {"test.fast_path": "true"}
    return {"examcache.near_cache": "lease"} if name == "tracking" else {}


@pytest.fixture
def threaded(request, db, redis_prefix):
    public, name = getattr(request, "param", (False, "redis"))
    app = itemapp.make_app(db, **{"examcache.redis_url": topology_url(request, name),
                                  "examcache.key_prefix": redis_prefix,
                                  "test.load_delay": str(LOAD_DELAY), **public_settings(public),
                                  **topology_settings(name)})
    request.node.examcache_app = app  # (the threads test reads its counters)
    with thread_server(app, threads=16) as base:
        yield [base]
    app.registry["test.engine"].dispose()
    get_policy(app.registry).close()


def check_fresh_after_quiescence(bases, db, path):
    expected = itemapp.db_version(db, 1)
    for base in bases:
        client = Client(base)
        data, _ = client.json("GET", path)
        client.close()
        assert data["version"] == expected


@pytest.mark.slow
@pytest.mark.parametrize("threaded", VARIANTS, indirect=True, ids=VARIANT_IDS)
def test_no_stale_reads_one_writer_six_readers_threads(threaded, db, record_property, request):
    public, name = request.node.callspec.params["threaded"]
    caches: list = []
    stale, reads, writes = race(threaded, "/items/1", "/items/1?v={v}", writes=300, readers=6,
                                reader_headers=reader_headers(public), caches=caches)
    record_property("reads", reads)
    early = get_policy(request.node.examcache_app.registry).stats.snapshot()["early_hits"]
    print(f"\n[G2 threads public={public} {name}] writes={writes} reads={reads} stale={stale} "
          f"hits={caches.count('HIT')} early={early}")
    assert reads >= 100  # readers really ran during the writes
    assert stale == 0
    check_public_hits(public, caches)
    check_fresh_after_quiescence(threaded, db, "/items/1")
    # early hits are on in every variant (barrier: after the barrier); how many the race
    # served depends on how often a value stayed held between writes (printed above)
    policy = get_policy(request.node.examcache_app.registry)
    client = Client(threaded[0])
    wait_until(lambda: client.json("GET", "/items/1", reader_headers(public))[1].get("X-Cache")
               == "HIT" and policy.stats.snapshot()["early_hits"] > early, timeout=10,
               message="an early hit")
    client.close()


@pytest.mark.slow
def test_naive_cache_aside_is_caught_by_the_same_race_threads(threaded, db):
    stale, reads, writes = race(threaded, "/naive/items/1", "/naive/items/1?v={v}",
                                writes=300, readers=6)
    print(f"\n[naive threads] writes={writes} reads={reads} stale={stale}")
    assert stale > 0, "the race test failed to detect the naive cache-aside's stale sets"


@pytest.mark.slow
@PUBLIC
def test_no_stale_reads_across_two_processes(db, topology, redis_prefix, public):
    with process_servers(2, db, topology.url, redis_prefix, load_delay=LOAD_DELAY,
                         settings={**public_settings(public),
                                   **getattr(topology, "settings", {})}) as bases:
        caches: list = []
        stale, reads, writes = race(bases, "/items/1", "/items/1?v={v}", writes=300, readers=6,
                                    reader_headers=reader_headers(public), caches=caches)
        print(f"\n[G2 processes public={public} {topology.kind}] writes={writes} reads={reads} stale={stale} "
              f"hits={caches.count('HIT')}")
        assert reads >= 100  # readers really ran during the writes
        assert stale == 0
        check_public_hits(public, caches)
        check_fresh_after_quiescence(bases, db, "/items/1")


@pytest.mark.slow
def test_naive_cache_aside_is_caught_across_two_processes(db, redis_url, redis_prefix):
    with process_servers(2, db, redis_url, redis_prefix, load_delay=LOAD_DELAY) as bases:
        stale, reads, writes = race(bases, "/naive/items/1", "/naive/items/1?v={v}",
                                    writes=300, readers=6)
        print(f"\n[naive processes] writes={writes} reads={reads} stale={stale}")
        assert stale > 0


def stampede(bases, path, n=50, headers=None):
    barrier = threading.Barrier(n)
    statuses, caches, errors = [], [], []
    lock = threading.Lock()

    def one(i):
        try:
            client = Client(bases[i % len(bases)])
            client.conn.connect()
            barrier.wait(60)
            status, answer, _ = client.request("GET", path, headers)
            client.close()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test
            errors.append(exc)
            return
        with lock:
            statuses.append(status)
            caches.append(answer.get("X-Cache"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert not errors, errors[:3]
    return statuses, caches, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 4])
@pytest.mark.parametrize(("public", "topology"), [VARIANTS[i] for i in SLOW_PATH],
                         ids=[VARIANT_IDS[i] for i in SLOW_PATH],
                         indirect=["topology"])  # (a cold key: misses, never the fast path)
def test_fifty_concurrent_requests_on_a_cold_key_load_once(db, topology, redis_prefix, processes,
                                                          public):
    counter = f"{redis_prefix}loads"
    # (HEALTHY: a timeout fails open, and every request loads: the fail-open tests prove that)
    with process_servers(processes, db, topology.url, redis_prefix, load_delay=0.3,
                         load_counter=counter, threads=50,
                         settings={**public_settings(public),
                                   **getattr(topology, "settings", {})}) as bases:
        statuses, caches, elapsed = stampede(bases, "/items/2", headers=reader_headers(public))
    client = topology.client()
    loads = int(client.get(counter) or 0)
    client.close()
    print(f"\n[G3 {processes} proc public={public} {topology.kind}] 50 requests: loads={loads} misses={caches.count('MISS')} "
          f"hits={caches.count('HIT')} in {elapsed:.2f}s")
    assert statuses == [200] * 50
    assert loads == 1
    assert caches.count("MISS") == 1


@pytest.mark.slow
@pytest.mark.parametrize("path", ["tween", "fast", "tween-barrier", "fast-barrier"])
def test_no_stale_reads_when_one_process_has_a_slow_link(db, private_redis, redis_prefix, path):
    """G2 with read leases and early hits (``near_cache = lease``), the way it is hardest:
    the readers' process reaches Redis over a slow link (every reply and invalidation message 20 ms
    late) while the writer's process does not. Held values are served with no Redis
    command, so only the writers' wait for the readers' acknowledgement keeps them fresh.
    ``fast``: the hits are served by the WSGI fast path, before Pyramid builds a request.
    ``-barrier``: the default near cache (``barrier``), whose early hits wait for the barrier
    (``peek_after_barrier``): its ``PONG`` comes over the slow link after the messages."""
    settings = dict(HEALTHY)
    if not path.endswith("-barrier"):
        settings["examcache.near_cache"] = "lease"
    if path.startswith("fast"):
        settings["test.fast_path"] = "true"
    with RespProxy("127.0.0.1", private_redis.port) as proxy:
        proxy.delay[DOWN] = 0.02
        urls = [private_redis.url, f"redis://127.0.0.1:{proxy.port}/0"]
        with process_servers(2, db, urls, redis_prefix, load_delay=LOAD_DELAY,
                             settings=settings) as bases:
            paced_race(bases, db, "slow link")


def paced_race(bases: list, db, label: str) -> None:
    """The slow-process race: paced, so that between two writes the slow process fills and
    holds the value; no stale read, and held values really served."""
    caches: list = []
    stale, reads, writes = race(bases, "/items/1", "/items/1?v={v}", writes=60, readers=6,
                                caches=caches, write_gap=0.1)
    print(f"\n[G2 {label}] writes={writes} reads={reads} stale={stale} "
          f"hits={caches.count('HIT')}")
    assert reads >= 100
    assert caches.count("HIT") >= 10  # the held values were really served
    assert stale == 0
    check_fresh_after_quiescence(bases, db, "/items/1")


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["sentinel-fast", "cluster-fast"], indirect=True)
def test_no_stale_reads_when_one_process_applies_messages_late(db, topology, redis_prefix):
    """The slow link's G2 race on Sentinel and Cluster (default near cache: early hits after
    the fenced barrier, served by the WSGI fast path; its misses and the tween take the same
    ``early_peek``, which the slow-link race above runs through both paths): the readers' process
    applies every invalidation message 20 ms late (``test.late_messages``, a busy process)
    while the writer's does not.  Held values are served, and only the barrier -- whose
    ``PONG`` the reader thread reads after the messages before it -- keeps them fresh."""
    settings = {**HEALTHY, **getattr(topology, "settings", {})}
    with process_servers(2, db, topology.url, redis_prefix, load_delay=LOAD_DELAY,
                         settings=settings,
                         env=[{}, {"EXAMCACHE_TEST_LATE_MESSAGES": "0.02"}]) as bases:
        paced_race(bases, db, f"late messages {topology.kind}")
