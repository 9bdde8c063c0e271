"""G6, durable invalidation, end to end: real itemapp processes, a private
redis-server, a private PostgreSQL database, the default relay settings.

A committed invalidation must reach Redis within 5 s (a row that a relay has
seen for ``relay_after`` = 2 s is re-applied at its next round, every
``relay_interval`` = 1 s, by any process's relay) even when the writing process A

* cannot reach Redis (a TCP proxy between A and Redis is cut) and is then
  killed -- its in-memory deferred queue dies with it;
* is killed between its database COMMIT and its Redis DEL
  (``test.kill_after_commit``: the test app kills itself in SQLAlchemy's ``after_commit``);
* stays alive, partitioned from Redis, while process B reaches it.

Each test first shows that B holds the *old* value (a HIT) right before the
fault and still serves it right after it (the writer's DEL really did not
happen, and the log row is there), so B serving the new version later proves
that a relay re-applied the logged invalidation -- not a cold cache.
"""
from __future__ import annotations

import http.client
import json
import signal
import time
from contextlib import ExitStack, contextmanager

import pytest
from sqlalchemy import create_engine, func, select

from pyramid_examcache.cache.invalidation_log import log_table

from ..conftest import private_database
from . import itemapp
from .proxy import TcpProxy
from .servers import Client, process_servers

#: G6's bound with the default relay settings (seconds from the PUT's return)
BOUND = 5.0
#: a poll that runs this long is reported as a failure (never a hang)
DEADLINE = 30.0
#: the default ``examcache.relay_after``: before that, no relay may apply a row
RELAY_AFTER = 2.0
#: extra app settings of process B (the reader).  A control run sets
#: ``{"examcache.invalidation_log": "false"}`` here: with no relay in B (and A
#: dead or cut off) the tests must fail.
B_SETTINGS: dict = {}

PREFIX = "durable:"
ITEM = "/items/1"


@pytest.fixture
def db():
    """A private database: no relay of another test (or of the pytest process)
    knows its URL, so nothing else can apply or delete its log rows."""
    with private_database("durable") as url:
        itemapp.create_schema(url)
        engine = create_engine(url)
        try:
            yield url, engine
        finally:
            engine.dispose()


@contextmanager
def writer_and_reader(url: str, a_redis: str, b_redis: str, a_settings: dict | None = None):
    """Process A (the writer, with extra app settings ``a_settings``) and process B (the
    reader), each with its own Redis URL; yields ``(proc_a, client_a, client_b)``.  Both
    are stopped at the end."""
    with ExitStack() as stack:
        procs: list = []
        (base_a,) = stack.enter_context(process_servers(
            1, url, a_redis, PREFIX, settings=a_settings, procs_out=procs))
        (base_b,) = stack.enter_context(process_servers(
            1, url, b_redis, PREFIX, settings=B_SETTINGS))
        a, b = Client(base_a, timeout=10), Client(base_b, timeout=10)
        stack.callback(a.close)
        stack.callback(b.close)
        yield procs[0], a, b


def log_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(log_table)).scalar_one()


def get(client: Client) -> tuple[str | None, int]:
    """GET the item: ``(X-Cache, version)``."""
    status, headers, body = client.request("GET", ITEM)
    assert status == 200, (status, body[:300])
    return headers.get("X-Cache"), json.loads(body)["version"]


def poll(what, check, deadline: float = DEADLINE, every: float = 0.05) -> float:
    """Call ``check()`` until it returns True; the seconds it took.  Fails with
    the message ``what()`` after ``deadline`` seconds."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > deadline:
            pytest.fail(f"{what()} after {deadline:.0f} s")
        time.sleep(every)
    return time.monotonic() - started


def wait_for_fresh(b: Client, version: int, since: float) -> float:
    """Poll B until it serves ``version``; seconds from ``since`` to the answer."""
    seen: list[tuple[float, str | None, int]] = []

    def check() -> bool:
        cache, v = get(b)
        seen.append((round(time.monotonic() - since, 2), cache, v))
        return v == version

    poll(lambda: f"B never served version {version} (reads: {seen[:2]} ... {seen[-2:]})", check)
    return seen[-1][0]


def assert_stale_and_logged(b: Client, engine, since: float, old: int) -> None:
    """Right after the fault the row is in the log and B still hits the old
    value: the writer's DEL did not reach Redis.  No relay may apply the row
    before ``relay_after``; a machine that stalls longer than that between the
    fault and this check fails the test (it would prove nothing)."""
    rows = log_rows(engine)
    cache, v = get(b)
    assert time.monotonic() - since < RELAY_AFTER, \
        "the machine stalled for relay_after seconds: the stale precondition cannot be checked"
    assert rows == 1, "the committed write left no row in the invalidation log"
    assert (cache, v) == ("HIT", old), \
        "the writer's invalidation reached Redis: the test would prove nothing"


def assert_log_emptied(engine) -> float:
    rows: list[int] = []

    def check() -> bool:
        rows.append(log_rows(engine))
        return rows[-1] == 0

    return poll(lambda: f"the invalidation log still has {rows[-1]} row(s)", check)


def kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def report(name: str, elapsed: float, emptied: float, record_property) -> None:
    print(f"\n[G6 {name}] B served the new version {elapsed:.2f} s after the write; "
          f"log empty {emptied:.2f} s later")
    record_property("fresh_after_s", round(elapsed, 2))


@pytest.mark.slow
@pytest.mark.e2e
def test_partitioned_writer_killed_after_its_commit(db, private_redis, record_property):
    url, engine = db
    with TcpProxy("127.0.0.1", private_redis.port) as proxy, \
            writer_and_reader(url, f"redis://127.0.0.1:{proxy.port}/0",
                              private_redis.url) as (proc_a, a, b):
        assert get(a) == ("MISS", 0)  # filled through the proxy
        assert get(a) == ("HIT", 0)
        assert get(b) == ("HIT", 0)  # the same Redis behind both

        proxy.cut()
        assert get(b) == ("HIT", 0)  # right before the fault: B holds the old value
        refused = proxy.refused
        data, _ = a.json("PUT", f"{ITEM}?v=7")  # commits; its DEL fails and is deferred
        put_returned = time.monotonic()
        assert data["version"] == 7
        kill(proc_a)  # the deferred invalidation dies with A; its log row does not
        assert proxy.refused > refused, "A never tried to reach Redis after its commit"
        assert itemapp.db_version(url, 1) == 7
        assert_stale_and_logged(b, engine, put_returned, old=0)

        elapsed = wait_for_fresh(b, 7, put_returned)
        emptied = assert_log_emptied(engine)
        report("partition+kill", elapsed, emptied, record_property)
        assert elapsed <= BOUND, f"G6: B served the old value for {elapsed:.2f} s > {BOUND} s"


@pytest.mark.slow
@pytest.mark.e2e
def test_writer_killed_between_commit_and_del(db, private_redis, record_property):
    url, engine = db
    with writer_and_reader(url, private_redis.url, private_redis.url,
                           a_settings={"test.kill_after_commit": "true"}) as (proc_a, a, b):
        assert get(b) == ("MISS", 0)
        assert get(b) == ("HIT", 0)
        assert get(a) == ("HIT", 0)  # A reads fine: the fault fires only after a writing commit

        assert get(b) == ("HIT", 0)  # right before the fault: B holds the old value
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            a.request("PUT", f"{ITEM}?v=7")  # A dies in after_commit: no response
        died = time.monotonic()
        assert proc_a.wait(10) == -signal.SIGKILL
        assert itemapp.db_version(url, 1) == 7  # the COMMIT happened
        assert_stale_and_logged(b, engine, died, old=0)

        elapsed = wait_for_fresh(b, 7, died)
        emptied = assert_log_emptied(engine)
        report("kill between COMMIT and DEL", elapsed, emptied, record_property)
        assert elapsed <= BOUND, f"G6: B served the old value for {elapsed:.2f} s > {BOUND} s"


@pytest.mark.slow
@pytest.mark.e2e
def test_writer_alive_but_partitioned_from_redis(db, private_redis, record_property):
    """A keeps running (its relay competes for the advisory lock and its own
    retries keep failing) while B reaches Redis: B must still see the write
    within the bound; once the partition heals, A serves it too."""
    url, engine = db
    with TcpProxy("127.0.0.1", private_redis.port) as proxy, \
            writer_and_reader(url, f"redis://127.0.0.1:{proxy.port}/0",
                              private_redis.url) as (proc_a, a, b):
        assert get(a) == ("MISS", 0)
        assert get(b) == ("HIT", 0)

        proxy.cut()
        assert get(b) == ("HIT", 0)
        data, _ = a.json("PUT", f"{ITEM}?v=7")
        put_returned = time.monotonic()
        assert data["version"] == 7
        assert_stale_and_logged(b, engine, put_returned, old=0)
        assert get(a)[1] == 7  # A never serves from the cache while it owes an invalidation

        elapsed = wait_for_fresh(b, 7, put_returned)
        emptied = assert_log_emptied(engine)
        report("partitioned writer alive", elapsed, emptied, record_property)
        assert proc_a.poll() is None, "A died"
        proxy.restore()
        poll(lambda: "A never served version 7 from the cache after the partition healed",
             lambda: get(a) == ("HIT", 7))
        assert elapsed <= BOUND, f"G6: B served the old value for {elapsed:.2f} s > {BOUND} s"
