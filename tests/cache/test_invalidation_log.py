"""The durable invalidation log (G6): the relay, its failure modes, the consumer's relay."""
from __future__ import annotations

import logging

import pytest
from sqlalchemy import Column, Integer, String, create_engine, func, select
from sqlalchemy.orm import declarative_base, sessionmaker

from pyramid_examcache import register
from pyramid_examcache.cache.backends.redis import RedisBackend
from pyramid_examcache.cache.invalidation_log import InvalidationLog, log_table, utcnow
from pyramid_examcache.cache.invalidation_log import metadata as log_metadata
from pyramid_examcache.cache.policy import CachePolicy
from pyramid_examcache.mail.outbox import metadata as outbox_metadata
from pyramid_examcache.settings import CacheSettings

from ..conftest import private_database
from ..mail.support import ConsumerProcess, wait_until, write_ini
from .test_policy import BrokenBackend, FakeClock

Base = declarative_base()


class Thing(Base):
    __tablename__ = "log_test_thing"
    __cache_keys__ = ("thing:{id}",)
    id = Column(Integer, primary_key=True)
    name = Column(String, default="")


def logged(engine, keys, tags=(), row_id="r1", scope="examcache:"):
    """A committed row whose writer never applied it (died, or partitioned)."""
    with engine.begin() as conn:
        conn.execute(log_table.insert().values(
            id=row_id, scope=scope, keys=list(keys), tags=list(tags), created_at=utcnow()))


def rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(log_table)).scalar()


def ids(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(log_table.c.id)).scalars())


@pytest.fixture
def pg_engine_with_log():
    with private_database("log") as url:
        engine = create_engine(url)
        log_metadata.create_all(engine)
        Base.metadata.create_all(engine)
        yield url, engine
        engine.dispose()


def test_a_relay_that_cannot_reach_the_store_keeps_the_rows(pg_engine_with_log):
    url, engine = pg_engine_with_log
    clock = FakeClock()
    backend = BrokenBackend()
    policy = CachePolicy(backend, CacheSettings(breaker_threshold=1, breaker_reset=1.0), clock=clock)
    journal = InvalidationLog(policy.invalidate_now, policy.usable, url=url, relay_after=2,
                              monotonic=clock, thread=False)
    policy.get_or_set("thing:1", lambda: "old")
    logged(engine, ["thing:1"])
    backend.down = True
    assert journal.run_once() == 0  # first seen now: left to its writer for relay_after
    clock.now += 2
    assert journal.run_once() == 0  # due, but the store is down
    assert rows(engine) == 1 and backend.get("thing:1") is not None
    # the breaker is open now: the next rounds skip without touching the rows
    assert journal.run_once() == 0 and rows(engine) == 1
    backend.down = False
    clock.now += 1.1
    assert journal.run_once() == 1
    assert rows(engine) == 0 and backend.get("thing:1") is None
    journal.close()
    policy.close()


def test_rows_are_relayed_only_after_relay_after_and_only_in_their_scope(pg_engine_with_log):
    url, engine = pg_engine_with_log
    clock = FakeClock()
    policy = CachePolicy(BrokenBackend())
    journal = InvalidationLog(policy.invalidate_now, policy.usable, url=url, relay_after=2,
                              scope="blue:", monotonic=clock, thread=False)
    logged(engine, ["a"], row_id="ours-1", scope="blue:")
    logged(engine, ["b"], row_id="green", scope="green:")
    assert journal.run_once() == 0
    clock.now += 1
    logged(engine, ["c"], row_id="ours-2", scope="blue:")
    assert journal.run_once() == 0
    clock.now += 1
    assert journal.run_once() == 1
    assert ids(engine) == ["green", "ours-2"]
    clock.now += 1
    assert journal.run_once() == 1
    assert ids(engine) == ["green"]  # another deployment's row is never taken
    assert journal.pending_rows() == 0
    journal.close()


def test_without_the_table_writes_still_commit_and_the_error_is_logged_once(tmp_path, caplog):
    engine = create_engine(f"sqlite:///{tmp_path}/no-log.sqlite")
    Base.metadata.create_all(engine)
    policy = CachePolicy(BrokenBackend())
    policy.journal = InvalidationLog(policy.invalidate_now, policy.usable)
    policy.get_or_set("thing:1", lambda: "old")
    session = register(sessionmaker(bind=engine)(), policy)
    with caplog.at_level(logging.ERROR, logger="pyramid_examcache.cache.invalidation_log"):
        for name in ("a", "b"):
            session.merge(Thing(id=1, name=name))
            session.commit()
    assert [r.message.count("examcache_invalidation_log") for r in caplog.records] == [1]
    assert policy.backend.get("thing:1") is None  # invalidated all the same
    policy.close()
    engine.dispose()


@pytest.mark.slow
def test_the_consumer_relays_the_log_with_no_web_process(pg_engine_with_log, private_redis,
                                                         tmp_path):
    url, engine = pg_engine_with_log
    outbox_metadata.create_all(engine)
    backend = RedisBackend(private_redis.url, prefix="relay:")
    policy = CachePolicy(backend)
    policy.get_or_set("thing:7", lambda: "old", tags=["group"])
    policy.get_or_set("thing:8", lambda: "old", tags=["group"])
    assert backend.get("thing:7", ("group",)) is not None
    logged(engine, ["thing:7"], ["group"], scope="relay:")
    ini = write_ini(str(tmp_path / "consumer.ini"), {
        "sqlalchemy.url": url, "mail.queue_url": f"sqlite:///{tmp_path}/q.sqlite",
        "examcache.redis_url": private_redis.url, "examcache.key_prefix": "relay:"})
    consumer = ConsumerProcess(ini, str(tmp_path / "consumer.log"))
    consumer.start()
    try:
        wait_until(lambda: rows(engine) == 0, timeout=20, message="the consumer's relay")
        assert backend.get("thing:7", ("group",)) is None
        assert backend.get("thing:8", ("group",)) is None  # invalidated through its tag
        assert "relaying the cache invalidation log" in consumer.log()
    finally:
        consumer.stop()
        policy.close()


def test_a_short_lived_script_leaves_no_row_behind(pg_engine_with_log):
    """A script commits, applies, and exits before its relay's next round: the
    rows it applied itself are deleted at close (and at interpreter exit)."""
    url, engine = pg_engine_with_log
    policy = CachePolicy(BrokenBackend())
    policy.journal = InvalidationLog(policy.invalidate_now, policy.usable, url=url, interval=3600)
    session = register(sessionmaker(bind=engine)(), policy)
    session.add(Thing(id=1, name="seed"))
    session.commit()
    session.close()
    assert rows(engine) == 1 and policy.journal.stats["applied_by_writer"] == 1
    policy.close()
    assert rows(engine) == 0
