"""G1/G2 for apps written the usual Pyramid way, through real HTTP (waitress),
real PostgreSQL and real Redis.

The cookiecutter's views never call ``flush()``: zope.sqlalchemy flushes inside
the commit (``tpc_begin``), after pyramid_tm has removed ``tm.active``.  A second
resource whose vote sleeps (``delay=``) holds the database COMMIT back for a
while after that flush, and readers poll the cached view meanwhile.  If the
invalidation ran at the flush, a reader would refill the old row in that
window and it would stay cached after the PUT returned.  The check after each
PUT: a GET sent after the PUT's response never sees the old version.
"""
from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from pyramid_examcache import register
from pyramid_examcache.cache import get_policy

from . import itemapp
from .servers import Client, thread_server

TRIALS = 20
DELAY = 0.3


@pytest.fixture
def served(cache_pg_url, redis_url, redis_prefix):
    itemapp.create_schema(cache_pg_url)
    app = itemapp.make_app(cache_pg_url, **{"examcache.redis_url": redis_url,
                                            "examcache.key_prefix": redis_prefix})
    with thread_server(app) as base:
        yield app, base
    get_policy(app.registry).close()
    app.registry["test.engine"].dispose()


class Readers:
    """Threads GETting ``path`` in a loop until stopped; errors reach the test."""

    def __init__(self, base: str, path: str, n: int = 2) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.reads = 0
        self.threads = [threading.Thread(target=self._run, args=(base, path)) for _ in range(n)]

    def _run(self, base, path):
        client = Client(base)
        try:
            while not self.stop.is_set():
                client.json("GET", path)
                self.reads += 1
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test
            self.errors.append(exc)
        finally:
            client.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a reader hung"
        assert not self.errors, self.errors[:3]


def stale_after_writes(base: str, put: str, trials: int = TRIALS, delay: float = DELAY):
    """PUT version 1..trials through ``put`` (a format string with {v} and {delay})
    while readers poll; returns the trials whose next GET saw an older version."""
    stale = []
    writer, checker = Client(base), Client(base)
    with Readers(base, "/items/1") as readers:
        for v in range(1, trials + 1):
            status, _, body = writer.request("PUT", put.format(v=v, delay=delay))
            assert status == 200, body[:300]
            data, _ = checker.json("GET", "/items/1")
            if data["version"] != v:
                stale.append((v, data["version"]))
    writer.close()
    checker.close()
    assert readers.reads > trials, "the readers did not race the writes"
    return stale


@pytest.mark.slow
def test_a_view_that_does_not_flush_invalidates_after_the_commit(served):
    _, base = served
    stale = stale_after_writes(base, "/items/1?v={v}&delay={delay}")
    print(f"\n[no flush, commit delayed {DELAY}s] stale after PUT: {len(stale)}/{TRIALS} {stale[:5]}")
    assert stale == []


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/bulk/items/1?v={v}&delay={delay}",
                                  "/text/items/1?v={v}&delay={delay}"],
                         ids=["orm-bulk-update", "text-dml"])
def test_statements_that_name_no_rows_invalidate_explicitly_after_the_commit(served, path):
    _, base = served
    stale = stale_after_writes(base, path, trials=10)
    assert stale == []


@pytest.mark.slow
def test_a_request_retried_by_pyramid_retry_invalidates_after_the_successful_commit(served):
    app, base = served
    stale = stale_after_writes(base, "/retry/items/1?v={v}&delay={delay}", trials=10)
    assert stale == []
    client = Client(base)
    data, headers = client.json("GET", "/items/1")
    assert data["version"] == 10  # the aborted first attempt's -1 never shows
    client.close()


def test_a_rolled_back_savepoint_invalidates_nothing(served):
    app, base = served
    client = Client(base)
    assert client.json("GET", "/items/1")[1]["X-Cache"] == "MISS"
    assert client.json("GET", "/items/1")[1]["X-Cache"] == "HIT"
    invalidations = get_policy(app.registry).stats.snapshot()["invalidations"]
    status, _, body = client.request("PUT", "/savepoint/items/1?v=5")
    assert status == 200 and json.loads(body)["version"] == 0
    data, headers = client.json("GET", "/items/1")
    assert (data["version"], headers["X-Cache"]) == (0, "HIT")
    assert get_policy(app.registry).stats.snapshot()["invalidations"] == invalidations
    # a released savepoint commits with the transaction: invalidated after it
    status, _, body = client.request("PUT", "/savepoint/items/1?v=6&keep=1")
    assert status == 200 and json.loads(body)["version"] == 6
    data, headers = client.json("GET", "/items/1")
    assert (data["version"], headers["X-Cache"]) == (6, "MISS")
    client.close()


def test_an_aborted_write_leaves_the_cache_alone(served):
    app, base = served
    client = Client(base)
    client.json("GET", "/items/2")
    status, _, _ = client.request("PUT", "/items/2?v=9&fail=1")
    assert status == 500
    data, headers = client.json("GET", "/items/2")
    assert (data["version"], headers["X-Cache"]) == (0, "HIT")
    client.close()


def test_a_script_session_without_pyramid_tm_invalidates_at_its_commit(served, cache_pg_url):
    app, base = served
    client = Client(base)
    client.json("GET", "/items/3")
    engine = create_engine(cache_pg_url)
    try:
        with Session(engine) as session:
            register(session, get_policy(app.registry))
            session.get(itemapp.Item, 3).version = 4
            session.flush()
            # flushed, not committed: readers still see (and may cache) version 0
            assert client.json("GET", "/items/3")[0]["version"] == 0
            session.execute(update(itemapp.Item).where(itemapp.Item.id == 4).values(version=1))
            session.commit()
        data, headers = client.json("GET", "/items/3")
        assert (data["version"], headers["X-Cache"]) == (4, "MISS")
    finally:
        engine.dispose()
        client.close()
