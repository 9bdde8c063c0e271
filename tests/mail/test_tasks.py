"""The delivery task, driven directly (no consumer, no sleeping): retries with exponential
backoff, permanent failures, crash recovery limits, Huey scheduling, periodic jobs."""
from __future__ import annotations

import datetime as dt
import smtplib

import pytest
from huey import MemoryHuey
from huey.exceptions import RetryTask
from huey.signals import SIGNAL_INTERRUPTED
from sqlalchemy import update

from pyramid_examcache.mail.outbox import (ACTIVE, COMPLETED, DELAYED, FAILED, WAITING,
                                           outbox_table, utcnow)
from pyramid_examcache.mail.queue import MailQueue
from pyramid_examcache.mail.tasks import deliver_job, retry_delay
from pyramid_examcache.settings import parse_mail_settings

from .helpers import insert_job, load

OK = None


class ScriptedTransport:
    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.sent = []

    def send(self, message, sender, recipients):
        outcome = self.outcomes.pop(0) if self.outcomes else OK
        if outcome is not None:
            raise outcome
        self.sent.append((str(message["Message-ID"]), sender, recipients))

    def close(self):
        pass


def make_queue(db, transport, **settings) -> MailQueue:
    parsed = parse_mail_settings({f"mail.{k}": str(v) for k, v in settings.items()})
    return MailQueue(parsed, engine=db, transport=transport, huey=MemoryHuey("t", results=False))


def make_due(db, job):
    """Drive time: the delayed retry is due now."""
    with db.begin() as conn:
        conn.execute(update(outbox_table).where(outbox_table.c.id == job)
                     .values(next_attempt_at=utcnow()))


def greylist():
    return smtplib.SMTPDataError(451, b"4.7.1 greylisted")


def test_backoff_schedule():
    settings = parse_mail_settings({})
    assert [retry_delay(settings, n) for n in (1, 2, 3)] == [2, 4, 8]


def test_transient_failures_delay_2_4_8_then_slow_phase(db):
    """The fast phase (RetryTask, Huey holds the wait) then the slow one (no broker entry,
    next_attempt_at only, capped by max_retry_delay). Before: the 4th failure was final."""
    transport = ScriptedTransport(*(greylist() for _ in range(7)))
    queue = make_queue(db, transport, max_retry_delay=30)
    job = insert_job(db)
    delays = []
    for attempt in (1, 2, 3):
        before = utcnow()
        with pytest.raises(RetryTask) as info:
            deliver_job(queue.settings, queue.resources, job)
        delays.append(info.value.delay)
        row = load(db, job)
        assert (row.state, row.attempts, row.failed_reason) == (DELAYED, attempt, "451 4.7.1 greylisted")
        assert dt.timedelta(seconds=info.value.delay) <= row.next_attempt_at - before
        assert deliver_job(queue.settings, queue.resources, job) == "skipped"  # not due yet: a duplicate entry does nothing
        make_due(db, job)
    assert delays == [2, 4, 8]
    waits = []
    for attempt in (4, 5, 6):
        before = utcnow()
        assert deliver_job(queue.settings, queue.resources, job) == DELAYED  # no RetryTask: nothing in the broker
        row = load(db, job)
        assert (row.state, row.attempts) == (DELAYED, attempt)
        waits.append(round((row.next_attempt_at - before).total_seconds()))
        make_due(db, job)
    assert waits == [16, 30, 30]  # capped at mail.max_retry_delay
    assert queue.huey.pending_count() == 0 and queue.huey.scheduled_count() == 0
    assert transport.sent == []


def test_max_age_turns_a_transient_failure_final(db):
    queue = make_queue(db, ScriptedTransport(greylist(), greylist()), max_age=3600)
    job = insert_job(db, created_at=utcnow() - dt.timedelta(seconds=3599))
    with pytest.raises(RetryTask):  # 1 s left: the next attempt is at the deadline
        deliver_job(queue.settings, queue.resources, job)
    row = load(db, job)
    assert row.state == DELAYED
    assert row.next_attempt_at <= row.created_at + dt.timedelta(seconds=3600)
    old = insert_job(db, created_at=utcnow() - dt.timedelta(seconds=3601))
    assert deliver_job(queue.settings, queue.resources, old) == FAILED
    row = load(db, old)
    assert row.state == FAILED and row.failed_reason == (
        "gave up after 1 attempts (mail.max_age): 451 4.7.1 greylisted")


def test_slow_phase_rows_are_pushed_by_the_relay_when_due(db):
    """Past the fast phase the outbox row is the only copy of the wait: the relay pushes it
    once when next_attempt_at has come, and not before, and not twice."""
    queue = make_queue(db, ScriptedTransport(greylist()), retries=0)
    job = insert_job(db, enqueued_at=utcnow())
    assert deliver_job(queue.settings, queue.resources, job) == DELAYED
    assert queue.tasks.relay.call_local() == 0  # not due yet (2 s)
    make_due(db, job)
    assert queue.tasks.relay.call_local() == 1
    assert queue.tasks.relay.call_local() == 0  # pushed once
    assert queue.huey.pending_count() == 1
    queue.huey.execute(queue.huey.dequeue())
    assert load(db, job).state == COMPLETED


def test_transient_then_success(db):
    transport = ScriptedTransport(greylist(), ConnectionResetError(104, "reset"), OK)
    queue = make_queue(db, transport, retry_delay=0.5, retry_backoff=3)
    job = insert_job(db)
    with pytest.raises(RetryTask) as first:
        deliver_job(queue.settings, queue.resources, job)
    make_due(db, job)
    with pytest.raises(RetryTask) as second:
        deliver_job(queue.settings, queue.resources, job)
    assert (first.value.delay, second.value.delay) == (0.5, 1.5)
    assert "reset" in load(db, job).failed_reason
    make_due(db, job)
    assert deliver_job(queue.settings, queue.resources, job) == COMPLETED
    row = load(db, job)
    assert (row.state, row.attempts, row.progress, row.failed_reason) == (COMPLETED, 3, 100, None)
    [(message_id, sender, rcpts)] = transport.sent
    assert message_id == row.message_id and sender == "no-reply@exams.example"
    assert rcpts == ["ann@example.com"]


def test_permanent_failure_at_once(db):
    queue = make_queue(db, ScriptedTransport(smtplib.SMTPDataError(550, b"5.1.1 unknown user")))
    job = insert_job(db)
    assert deliver_job(queue.settings, queue.resources, job) == FAILED
    row = load(db, job)
    assert (row.state, row.attempts, row.failed_reason) == (FAILED, 1, "550 5.1.1 unknown user")


def test_invalid_address_fails_at_once(db):
    transport = ScriptedTransport()
    queue = make_queue(db, transport)
    job = insert_job(db, to="not-an-address")
    assert deliver_job(queue.settings, queue.resources, job) == FAILED
    assert "invalid address" in load(db, job).failed_reason
    assert transport.sent == []


def test_zero_retries_go_to_the_slow_phase_at_once(db):
    """Before: mail.retries = 0 failed on the first transient error."""
    queue = make_queue(db, ScriptedTransport(greylist()), retries=0)
    job = insert_job(db)
    assert deliver_job(queue.settings, queue.resources, job) == DELAYED
    assert queue.huey.scheduled_count() == 0


def test_attempts_lost_to_crashes_are_bounded_by_max_age(db):
    """A row whose attempts died mid-send (lease expired each time) is given up once it is
    older than mail.max_age (+ the lease); younger, it is tried again."""
    queue = make_queue(db, ScriptedTransport(), max_age=3600, lease=60)
    old = insert_job(db, state=ACTIVE, attempts=4, lease_until=utcnow() - dt.timedelta(seconds=1),
                     failed_reason="451 busy", created_at=utcnow() - dt.timedelta(seconds=3661))
    assert deliver_job(queue.settings, queue.resources, old) == FAILED
    row = load(db, old)
    assert row.state == FAILED
    assert row.failed_reason == "gave up after 4 attempts (mail.max_age): 451 busy"
    young = insert_job(db, state=ACTIVE, attempts=4, lease_until=utcnow() - dt.timedelta(seconds=1))
    assert deliver_job(queue.settings, queue.resources, young) == COMPLETED


def test_huey_schedules_the_retry_with_our_delay(db):
    """Through Huey itself: the task raises RetryTask and Huey puts it on the schedule."""
    queue = make_queue(db, ScriptedTransport(greylist()))
    huey = queue.huey
    job = insert_job(db)
    queue.enqueue(job)
    task = huey.dequeue()
    before = huey._get_timestamp()
    huey.execute(task)
    [scheduled] = huey.scheduled()
    assert scheduled.args == (job,)
    wait = (scheduled.eta - before).total_seconds()
    assert 1.9 < wait < 2.5
    assert huey.read_schedule(before) == []
    [due] = huey.read_schedule(scheduled.eta)
    make_due(db, job)
    huey.execute(due, scheduled.eta)
    assert load(db, job).state == COMPLETED
    assert huey.pending_count() == 0 and huey.scheduled_count() == 0


def test_interrupted_task_is_handed_back_and_requeued(db):
    queue = make_queue(db, ScriptedTransport())
    job = insert_job(db)
    queue.enqueue(job)
    task = queue.huey.dequeue()
    from pyramid_examcache.mail import outbox

    with db.begin() as conn:
        outbox.claim(conn, job, 60, utcnow())
    queue.huey._emit(SIGNAL_INTERRUPTED, task)
    row = load(db, job)
    assert row.state == WAITING and row.enqueued_at is not None
    assert queue.huey.pending_count() == 1


def test_periodic_jobs_relay_and_purge(db):
    queue = make_queue(db, ScriptedTransport(), keep_completed=60)
    waiting = insert_job(db)
    old = insert_job(db, state=COMPLETED, finished_at=utcnow() - dt.timedelta(seconds=61))
    assert queue.tasks.relay.call_local() == 1
    assert queue.huey.pending_count() == 1
    assert queue.tasks.purge.call_local() == 1
    assert load(db, old) is None and load(db, waiting).enqueued_at is not None
    assert {t.name for t in queue.huey.read_periodic(utcnow())} == {  # on every check
        queue.tasks.relay.name, queue.tasks.purge.name}
