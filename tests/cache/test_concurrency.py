"""G2 and G3 over real HTTP (waitress), real PostgreSQL and a shared Redis,
in threads of one process and across processes.

The naive cache-aside of the seed runs through the same race and must be
caught: that proves the race test can see a stale set at all."""
from __future__ import annotations

import threading
import time

import pytest
import redis

from pyramid_examcache.cache import get_policy

from . import itemapp
from .servers import Client, process_servers, race, thread_server

LOAD_DELAY = 0.005  # widens the load window equally for both caches


@pytest.fixture
def db(cache_pg_url):
    itemapp.create_schema(cache_pg_url)
    return cache_pg_url


@pytest.fixture
def threaded(db, redis_url, redis_prefix):
    app = itemapp.make_app(db, **{"examcache.redis_url": redis_url,
                                  "examcache.key_prefix": redis_prefix,
                                  "test.load_delay": str(LOAD_DELAY)})
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
def test_no_stale_reads_one_writer_six_readers_threads(threaded, db, record_property):
    stale, reads, writes = race(threaded, "/items/1", "/items/1?v={v}", writes=300, readers=6)
    record_property("reads", reads)
    print(f"\n[G2 threads] writes={writes} reads={reads} stale={stale}")
    assert reads >= 100  # readers really ran during the writes
    assert stale == 0
    check_fresh_after_quiescence(threaded, db, "/items/1")


@pytest.mark.slow
def test_naive_cache_aside_is_caught_by_the_same_race_threads(threaded, db):
    stale, reads, writes = race(threaded, "/naive/items/1", "/naive/items/1?v={v}",
                                writes=300, readers=6)
    print(f"\n[naive threads] writes={writes} reads={reads} stale={stale}")
    assert stale > 0, "the race test failed to detect the naive cache-aside's stale sets"


@pytest.mark.slow
def test_no_stale_reads_across_two_processes(db, redis_url, redis_prefix):
    with process_servers(2, db, redis_url, redis_prefix, load_delay=LOAD_DELAY) as bases:
        stale, reads, writes = race(bases, "/items/1", "/items/1?v={v}", writes=300, readers=6)
        print(f"\n[G2 processes] writes={writes} reads={reads} stale={stale}")
        assert reads >= 100  # readers really ran during the writes
        assert stale == 0
        check_fresh_after_quiescence(bases, db, "/items/1")


@pytest.mark.slow
def test_naive_cache_aside_is_caught_across_two_processes(db, redis_url, redis_prefix):
    with process_servers(2, db, redis_url, redis_prefix, load_delay=LOAD_DELAY) as bases:
        stale, reads, writes = race(bases, "/naive/items/1", "/naive/items/1?v={v}",
                                    writes=300, readers=6)
        print(f"\n[naive processes] writes={writes} reads={reads} stale={stale}")
        assert stale > 0


def stampede(bases, path, n=50):
    barrier = threading.Barrier(n)
    statuses, caches, errors = [], [], []
    lock = threading.Lock()

    def one(i):
        try:
            client = Client(bases[i % len(bases)])
            client.conn.connect()
            barrier.wait(60)
            status, headers, _ = client.request("GET", path)
            client.close()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test
            errors.append(exc)
            return
        with lock:
            statuses.append(status)
            caches.append(headers.get("X-Cache"))

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
def test_fifty_concurrent_requests_on_a_cold_key_load_once(db, redis_url, redis_prefix, processes):
    counter = f"{redis_prefix}loads"
    with process_servers(processes, db, redis_url, redis_prefix, load_delay=0.3,
                         load_counter=counter, threads=50) as bases:
        statuses, caches, elapsed = stampede(bases, "/items/2")
    loads = int(redis.Redis.from_url(redis_url).get(counter) or 0)
    print(f"\n[G3 {processes} proc] 50 requests: loads={loads} misses={caches.count('MISS')} "
          f"hits={caches.count('HIT')} in {elapsed:.2f}s")
    assert statuses == [200] * 50
    assert loads == 1
    assert caches.count("MISS") == 1
