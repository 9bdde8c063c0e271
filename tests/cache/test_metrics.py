"""Prometheus metrics (issue 13, item 2): scrape, act, scrape again -- the counters moved by
exactly what was done; in one process and summed over two processes (prometheus_client's
multiprocess mode), through real HTTP (waitress), PostgreSQL and Redis."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..mail.support import wait_until
from . import itemapp
from .servers import Client, process_servers, thread_server


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def db(cache_pg_url):
    itemapp.create_schema(cache_pg_url)
    return cache_pg_url


def test_counters_move_by_exactly_what_was_done(db, redis_url, redis_prefix):
    app = itemapp.make_app(db, **{"examcache.redis_url": redis_url,
                                  "examcache.key_prefix": redis_prefix,
                                  "examcache.metrics_path": "/metrics"})
    with thread_server(app) as base:
        client = Client(base)
        try:
            before = scrape(base)
            client.json("GET", "/items/1")  # miss + load + store
            client.json("GET", "/items/1")  # hit
            client.json("GET", "/items/1")  # hit
            client.json("PUT", "/items/1?v=5")  # one key invalidated after the commit
            after = scrape(base)
        finally:
            client.close()
    p = redis_prefix
    for name, moved in (("hits", 2), ("misses", 1), ("loads", 1), ("stores", 1),
                        ("stale_rejected", 0), ("errors", 0), ("lock_waits", 0)):
        metric = f"examcache_cache_{name}_total"
        assert value(after, metric, prefix=p) - value(before, metric, prefix=p) == moved, name
    assert value(after, "examcache_cache_invalidations_total", prefix=p) > value(
        before, "examcache_cache_invalidations_total", prefix=p)
    assert value(after, "examcache_cache_breaker_open", prefix=p) == 0
    assert ("examcache_cache_durable_invalidations_pending", (("prefix", p),)) in after


def test_two_processes_are_summed_in_multiprocess_mode(db, redis_url, redis_prefix, tmp_path):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with process_servers(2, db, redis_url, redis_prefix, env=[env, env],
                         settings={"examcache.metrics_path": "/metrics"}) as bases:
        clients = [Client(b) for b in bases]
        try:
            before = scrape(bases[1])
            clients[0].json("GET", "/items/2")  # process 0: miss
            for _ in range(3):
                clients[0].json("GET", "/items/2")  # process 0: 3 hits
            for _ in range(2):
                clients[1].json("GET", "/items/2")  # process 1: 2 hits (filled by process 0)
            after = scrape(bases[1])  # either process answers for both
            again = scrape(bases[0])
        finally:
            for c in clients:
                c.close()
    hits = "examcache_cache_hits_total"
    assert value(after, hits, prefix=redis_prefix) - value(before, hits, prefix=redis_prefix) == 5
    assert value(again, hits, prefix=redis_prefix) == value(after, hits, prefix=redis_prefix)
    misses = "examcache_cache_misses_total"
    assert value(after, misses, prefix=redis_prefix) - value(before, misses,
                                                            prefix=redis_prefix) == 1


def test_the_breaker_gauge_follows_an_outage(db, private_redis, redis_prefix):
    app = itemapp.make_app(db, **{"examcache.redis_url": private_redis.url,
                                  "examcache.key_prefix": redis_prefix,
                                  "examcache.socket_timeout": "0.2",
                                  "examcache.breaker_threshold": "1",
                                  "examcache.breaker_reset": "30",
                                  "examcache.metrics_path": "/metrics"})
    with thread_server(app) as base:
        client = Client(base)
        try:
            client.json("GET", "/items/3")
            private_redis.stop()
            client.json("GET", "/items/3")  # served from the database; the breaker opens
            wait_until(lambda: value(scrape(base), "examcache_cache_breaker_open",
                                     prefix=redis_prefix) == 1, timeout=15, message="gauge 1")
            errors = value(scrape(base), "examcache_cache_errors_total", prefix=redis_prefix)
            assert errors >= 1
        finally:
            client.close()


def test_read_leases_and_a_reader_that_stops_acknowledging_are_visible(db, private_redis,
                                                                       redis_prefix):
    """The process's read lease is a gauge; a write that had to wait out another process's
    lease (that process stopped acknowledging) moves ``lease_waits`` and ``lease_timeouts``."""
    from pyramid_examcache.cache.backends.redis import RedisBackend

    app = itemapp.make_app(db, **{"examcache.redis_url": private_redis.url,
                                  "examcache.key_prefix": redis_prefix,
                                  "examcache.near_cache": "lease",
                                  "examcache.metrics_path": "/metrics"})
    other = RedisBackend(private_redis.url, prefix=redis_prefix, near_cache_bytes=1 << 20,
                         tracking=True, lease_ms=1000)  # another process's worth
    p = redis_prefix
    with thread_server(app) as base:
        client = Client(base)
        try:
            # (only a process that reads holds a lease: read while waiting for the gauge)
            assert wait_until(lambda: client.json("GET", "/items/1") and value(
                scrape(base), "examcache_cache_read_leases", prefix=p) == 1,
                timeout=10, message="lease gauge")
            assert wait_until(other._lease.valid, timeout=10, message="the other's lease")
            client.json("GET", "/items/1")
            before = scrape(base)
            client.json("PUT", "/items/1?v=2")  # the other reader acknowledges: a short wait
            other._lease._stopped.set()  # then it stops acknowledging (a stalled process)
            other._lease._wake.set()
            other._lease._thread.join(5)
            client.json("PUT", "/items/1?v=3")  # waits until its lease has run out
            after = scrape(base)
        finally:
            client.close()
            other.close()
    moved = {name: value(after, f"examcache_cache_{name}_total", prefix=p)
             - value(before, f"examcache_cache_{name}_total", prefix=p)
             for name in ("lease_waits", "lease_timeouts")}
    assert moved["lease_waits"] >= 2 and moved["lease_timeouts"] >= 1, moved
