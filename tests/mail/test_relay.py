"""The relay (M2): after-commit push and the periodic/start-up relay, against PostgreSQL."""
from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from sqlalchemy import select

from pyramid_examcache.mail.outbox import (ACTIVE, COMPLETED, DELAYED, WAITING, outbox_table,
                                           utcnow)
from pyramid_examcache.mail.relay import push_one, relay
from pyramid_examcache.settings import parse_mail_settings

from .helpers import insert_job, load

S = dt.timedelta(seconds=1)


class FakeQueue:
    """A broker that records pushes; ``down`` makes it unreachable, ``fail_after`` after n pushes."""

    def __init__(self, **settings):
        self.settings = parse_mail_settings({f"mail.{k}": v for k, v in settings.items()})
        self.pushed: list[str] = []
        self.down = False
        self.fail_after: int | None = None

    @contextlib.contextmanager
    def batch(self):
        yield self.push

    def push(self, job_id: str) -> None:
        if self.down or (self.fail_after is not None and len(self.pushed) >= self.fail_after):
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.pushed.append(job_id)


def test_push_one_pushes_a_fresh_row_once(db):
    queue = FakeQueue()
    job = insert_job(db)
    assert push_one(db, queue, job)
    assert not push_one(db, queue, job)
    assert relay(db, queue, queue.settings) == 0
    assert queue.pushed == [job]
    assert load(db, job).enqueued_at is not None


def test_broker_down_leaves_the_row_for_the_relay(db):
    queue = FakeQueue()
    queue.down = True
    job = insert_job(db)
    assert not push_one(db, queue, job)
    assert load(db, job).enqueued_at is None and load(db, job).state == WAITING
    assert relay(db, queue, queue.settings) == 0
    queue.down = False
    assert relay(db, queue, queue.settings) == 1
    assert relay(db, queue, queue.settings) == 0  # never twice for one successful push
    assert queue.pushed == [job]


def test_relay_stops_at_the_first_broker_error_and_keeps_what_was_pushed(db):
    queue = FakeQueue()
    jobs = [insert_job(db, created_at=utcnow() - (10 - i) * S) for i in range(4)]
    queue.fail_after = 2
    assert relay(db, queue, queue.settings) == 2
    assert queue.pushed == jobs[:2]
    assert [load(db, j).enqueued_at is not None for j in jobs] == [True, True, False, False]
    queue.fail_after = None
    assert relay(db, queue, queue.settings) == 2
    assert queue.pushed == jobs


def test_relay_rescues_lost_pushes_and_dead_attempts_only(db):
    queue = FakeQueue(requeue_after=600)
    now = utcnow()
    dead_attempt = insert_job(db, state=ACTIVE, attempts=1, lease_until=now - S, enqueued_at=now - 60 * S)
    live_attempt = insert_job(db, state=ACTIVE, attempts=1, lease_until=now + 60 * S, enqueued_at=now)
    lost_retry = insert_job(db, state=DELAYED, attempts=1, next_attempt_at=now - 700 * S, enqueued_at=now - 800 * S)
    due_retry = insert_job(db, state=DELAYED, attempts=1, next_attempt_at=now + 5 * S, enqueued_at=now)
    lost_push = insert_job(db, enqueued_at=now - 700 * S)
    queued = insert_job(db, enqueued_at=now - 10 * S)
    done = insert_job(db, state=COMPLETED, finished_at=now)
    assert relay(db, queue, queue.settings, now=now) == 3
    assert sorted(queue.pushed) == sorted([dead_attempt, lost_retry, lost_push])
    row = load(db, dead_attempt)
    assert row.state == WAITING and row.lease_until is None  # a new attempt will claim it
    assert load(db, lost_retry).state == DELAYED
    assert relay(db, queue, queue.settings, now=now) == 0
    assert {live_attempt, due_retry, queued, done}.isdisjoint(queue.pushed)


def test_relay_skips_rows_locked_by_another_relay(db):
    queue = FakeQueue()
    locked = insert_job(db, created_at=utcnow() - 5 * S)
    free = insert_job(db)
    with db.connect() as other:
        with other.begin():
            other.execute(select(outbox_table.c.id).where(outbox_table.c.id == locked)
                          .with_for_update()).all()
            assert relay(db, queue, queue.settings) == 1  # does not wait for the lock
            assert queue.pushed == [free]
    assert relay(db, queue, queue.settings) == 1
    assert queue.pushed == [free, locked]


@pytest.mark.parametrize("state", [ACTIVE, COMPLETED])
def test_push_one_ignores_rows_that_are_not_fresh(db, state):
    queue = FakeQueue()
    job = insert_job(db, state=state)
    assert not push_one(db, queue, job)
    assert not push_one(db, queue, "no-such-job")
    assert queue.pushed == []


def test_a_failed_push_opens_a_breaker_so_later_requests_do_not_wait(private_redis):
    """Redis hung (SIGSTOP): the first push pays mail.queue_timeout, the next ones fail
    over to the relay at once instead of each paying it again."""
    import time

    import redis

    from pyramid_examcache.mail.queue import QueueUnavailable, build_queue

    queue = build_queue({"mail.queue_url": private_redis.url, "mail.queue_timeout": "0.3",
                         "mail.transport": "memory"})
    queue.enqueue("a" * 32)  # reachable: pushed
    private_redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            queue.enqueue("b" * 32)
        assert time.monotonic() - started >= 0.25
        started = time.monotonic()
        with pytest.raises(QueueUnavailable):
            queue.enqueue("c" * 32)
        assert time.monotonic() - started < 0.05
    finally:
        private_redis.resume()
        queue.close()
