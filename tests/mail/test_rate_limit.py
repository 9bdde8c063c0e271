"""``mail.rate_limit`` / ``mail.domain_rate_limits``: never more than N arrivals at the SMTP
server in ANY window of the period (every window anchored at an arrival is checked), all
mails delivered, none failed, and throttling is no attempt.

* two real ``examcache-consumer`` processes sharing a private Redis, PostgreSQL outbox,
  aiosmtpd recording arrivals, ``10/s``, 100 mails;
* one consumer on an embedded ``sqlite:///`` queue (the SQLite send log) with a domain limit;
* both send logs under threads that hold a slot for a random time (the in-flight rule);
* the settings: a malformed value names the setting and the bad part.
"""
from __future__ import annotations

import random
import threading
import time
import uuid

import pytest
from pyramid.exceptions import ConfigurationError
from sqlalchemy import select

from pyramid_examcache.mail.outbox import outbox_table
from pyramid_examcache.mail.ratelimit import SendLimiter
from pyramid_examcache.mail.ratewindow import RedisWindows, SqliteWindows
from pyramid_examcache.mail.status import job_status
from pyramid_examcache.rates import Rate
from pyramid_examcache.settings import parse_mail_settings

from bench.stats import most_in_any_window

from .helpers import insert_job
from .support import ConsumerProcess, wait_until, write_ini

SENDER = "no-reply@exams.example"


def test_most_in_any_window_counts_across_bucket_boundaries():
    # 2 at the end of one second and 2 at the start of the next: fixed buckets see 2 and 2
    assert most_in_any_window([0.8, 0.9, 1.1, 1.2], 1.0) == 4
    assert most_in_any_window([0.0, 1.0, 2.0], 1.0) == 1
    assert most_in_any_window([], 1.0) == 0


# -- settings -----------------------------------------------------------------------------------

def test_rate_settings_are_parsed():
    s = parse_mail_settings({"mail.rate_limit": "14/s",
                             "mail.domain_rate_limits": "gmail.com=20/s,\n Example.ORG=5/m"})
    assert s.rate_limit == (Rate(14, 1.0, "14/s"),)
    assert dict(s.domain_rate_limits) == {"gmail.com": Rate(20, 1.0, "20/s"),
                                          "example.org": Rate(5, 60.0, "5/m")}
    both = parse_mail_settings({"mail.rate_limit": "50000/d, 14 / sec"}).rate_limit
    assert both == (Rate(14, 1.0, "14/sec"), Rate(50000, 86400.0, "50000/d"))
    assert parse_mail_settings({"mail.rate_limit": "100/h"}).rate_limit[0].period == 3600
    assert parse_mail_settings({"mail.rate_limit": "6/minutes"}).rate_limit[0].period == 60
    unset = parse_mail_settings({})
    assert unset.rate_limit == () and unset.domain_rate_limits == ()


@pytest.mark.parametrize("name, value, part", [
    ("mail.rate_limit", "14/x", "'x' is not a period"),
    ("mail.rate_limit", "fast", "'fast' is not a rate"),
    ("mail.rate_limit", "0/s", "'0/s' allows nothing"),
    ("mail.rate_limit", "1.5/s", "'1.5/s' is not a rate"),
    ("mail.rate_limit", "14/s, 20/s", "'20/s' repeats the period of 14/s"),
    ("mail.rate_limit", "14/s, 50000/x", "'x' is not a period"),
    ("mail.domain_rate_limits", "gmail.com:20/s", "'gmail.com:20/s' must be domain=rate"),
    ("mail.domain_rate_limits", "gmail.com=20/s, bad domain=1/s", "'bad domain' is not a domain"),
    ("mail.domain_rate_limits", "a.example=1/s, A.example=2/s", "'a.example' is named twice"),
    ("mail.domain_rate_limits", "a.example=ten/s", "'ten/s' is not a rate"),
])
def test_a_malformed_rate_names_the_setting_and_the_bad_part(name, value, part):
    with pytest.raises(ConfigurationError) as info:
        parse_mail_settings({name: value})
    assert f"{name} = {value!r}" in str(info.value)
    assert part in str(info.value)


# -- the send logs under concurrency ------------------------------------------------------------

def hammer(limiter: SendLimiter, domains_of, sends: int, threads: int = 6) -> list[tuple]:
    """``threads`` senders taking ``sends`` slots in all; each send holds its slot for a
    random 0-80 ms and "arrives" at a random moment of it. Returns (arrival, domains)."""
    arrivals: list[tuple] = []
    lock = threading.Lock()
    left = iter(range(sends))

    def sender() -> None:
        rng = random.Random()
        for n in left:
            domains = domains_of(n)
            while True:
                token, wait, windows = limiter.acquire(domains)
                if wait == 0:
                    break
                time.sleep(min(wait, 0.05))
            duration = rng.uniform(0.0, 0.08)
            time.sleep(duration * rng.random())
            with lock:
                arrivals.append((time.time(), domains))
            time.sleep(duration * rng.random())
            limiter.finish(token, windows)

    workers = [threading.Thread(target=sender) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert len(arrivals) == sends
    return arrivals


@pytest.fixture(params=["redis", "sqlite"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SqliteWindows(str(tmp_path / "huey.sqlite.ratelimit"))
    redis_server = request.getfixturevalue("private_redis")
    import redis

    return RedisWindows(redis.Redis.from_url(redis_server.url))


def test_the_send_log_holds_the_limit_in_every_window(store):
    limiter = SendLimiter(store, f"t-{uuid.uuid4().hex[:6]}", [Rate(5, 0.5, "10/s")], (), hold=30)
    arrivals = hammer(limiter, lambda n: {"x.example"}, 25)
    assert most_in_any_window([a for a, _ in arrivals], 0.5) <= 5
    # and it does not starve: 25 sends at 5 per 0.5 s take about 2 s, not 30 (hold)
    span = max(a for a, _ in arrivals) - min(a for a, _ in arrivals)
    assert 1.9 < span < 10, span


def test_domain_limits_count_each_domain_once_per_mail(store):
    limiter = SendLimiter(store, f"t-{uuid.uuid4().hex[:6]}", (),
                          (("slow.example", Rate(3, 0.5, "6/s")),), hold=30)

    def domains_of(n: int) -> set[str]:  # every other mail also goes to slow.example
        return {"fast.example", "slow.example"} if n % 2 else {"fast.example"}

    arrivals = hammer(limiter, domains_of, 24)
    slow = [a for a, d in arrivals if "slow.example" in d]
    fast_only = [a for a, d in arrivals if "slow.example" not in d]
    assert len(slow) == 12 and most_in_any_window(slow, 0.5) <= 3
    assert most_in_any_window(fast_only, 0.5) > 3  # the other mails are not held back


def test_a_mail_needs_a_slot_in_every_limit_at_once(store):
    limiter = SendLimiter(store, f"t-{uuid.uuid4().hex[:6]}", [Rate(10, 60, "10/m")],
                          (("a.example", Rate(1, 60, "1/m")),), hold=30)
    token, wait, windows = limiter.acquire({"a.example", "b.example"})
    assert wait == 0 and [w[0].split(":", 1)[1] for w in windows] == ["all:60",
                                                                       "domain:a.example"]
    limiter.finish(token, windows)
    token2, wait2, _ = limiter.acquire({"a.example"})
    assert token2 is None and 59 < wait2 <= 60  # the a.example slot is back in a minute
    token3, wait3, _ = limiter.acquire({"b.example"})  # refused above: took no global slot
    assert wait3 == 0 and token3 is not None


# -- the consumers ------------------------------------------------------------------------------

def consumer_settings(pg_url, smtp_port, queue_url, **overrides) -> dict:
    return {"sqlalchemy.url": pg_url, "mail.transport": "smtp", "mail.host": "127.0.0.1",
            "mail.port": smtp_port, "mail.default_sender": SENDER, "mail.queue_url": queue_url,
            "mail.queue_name": f"ratetest-{uuid.uuid4().hex[:8]}", "mail.relay_interval": "1",
            "mail.workers": "2", "mail.lease": "10", "mail.shutdown_timeout": "5",
            **overrides}


def rows(db, jobs: list[str]) -> list:
    with db.connect() as conn:
        return conn.execute(select(outbox_table.c.id, outbox_table.c.state,
                                   outbox_table.c.attempts)
                            .where(outbox_table.c.id.in_(jobs))).all()


def saw_a_throttled_job(db, jobs: list[str]) -> dict | None:
    """The status of a job held back by the limiter (``delayed``, no attempt counted, a
    ``nextAttemptAt``), if one is in that state now."""
    with db.connect() as conn:
        held = conn.execute(select(outbox_table.c.id)
                            .where(outbox_table.c.id.in_(jobs), outbox_table.c.state == "delayed",
                                   outbox_table.c.attempts == 0)).scalars().first()
        return job_status(conn, held) if held else None


def stop_all(consumers: list[ConsumerProcess]) -> None:
    """Stop the consumers together (each drains for up to mail.shutdown_timeout)."""
    stopping = [threading.Thread(target=c.stop) for c in consumers]
    for thread in stopping:
        thread.start()
    for thread in stopping:
        thread.join(30)


def test_two_consumers_never_exceed_10_per_second(db, pg_url, private_redis, smtp_server,
                                                  tmp_path):
    settings = consumer_settings(pg_url, smtp_server.port, private_redis.url,
                                 **{"mail.rate_limit": "10/s"})
    ini = write_ini(str(tmp_path / "mail.ini"), settings)
    consumers = [ConsumerProcess(ini, str(tmp_path / f"consumer{i}.log")) for i in (1, 2)]
    try:
        starting = [threading.Thread(target=c.start) for c in consumers]  # both at once
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join(30)
        assert all("Huey consumer started" in c.log() for c in consumers)
        jobs = [insert_job(db, f"user{i}@example.com") for i in range(100)]
        arrived = smtp_server.handler.attempts
        status = wait_until(lambda: saw_a_throttled_job(db, jobs) or len(arrived) >= 100,
                            timeout=40, message="a job held back (or all sent)")
        wait_until(lambda: len(smtp_server.handler.attempts) >= 100, timeout=40,
                   message="100 arrivals")
        wait_until(lambda: all(r.state == "completed" for r in rows(db, jobs)), timeout=10,
                   message="all completed")
    finally:
        stop_all(consumers)
    arrivals = [a.at for a in smtp_server.handler.attempts]
    assert sorted(smtp_server.accepted_ids()) == sorted(f"<{j}@exams.example>" for j in jobs)
    assert most_in_any_window(arrivals, 1.0) <= 10
    assert [r.attempts for r in rows(db, jobs)] == [1] * 100  # throttling is no attempt
    # while held back, a job's status said so (and when it would be tried again)
    assert status is not True, "no job was seen held back"
    assert status["state"] == "delayed" and status["attempts"] == 0
    assert status["nextAttemptAt"] is not None
    for consumer in consumers:  # both processes sent, both were held back
        assert "delivered" in consumer.log() and "rate limited" in consumer.log()


def test_an_embedded_sqlite_queue_with_a_domain_limit(db, pg_url, smtp_server, tmp_path):
    settings = consumer_settings(pg_url, smtp_server.port, f"sqlite:///{tmp_path}/huey.sqlite",
                                 **{"mail.rate_limit": "100/s", "mail.workers": "3",
                                    "mail.domain_rate_limits": "slow.example=4/s"})
    consumer = ConsumerProcess(write_ini(str(tmp_path / "mail.ini"), settings),
                               str(tmp_path / "consumer.log"))
    try:
        consumer.start()
        slow = [insert_job(db, f"s{i}@slow.example") for i in range(12)]
        fast = [insert_job(db, f"f{i}@fast.example") for i in range(12)]
        wait_until(lambda: all(r.state == "completed" for r in rows(db, slow + fast)),
                   timeout=30, message="all completed")
    finally:
        consumer.stop()
    by_id = {a.message_id: a.at for a in smtp_server.handler.attempts}
    slow_at = [by_id[f"<{j}@exams.example>"] for j in slow]
    fast_at = [by_id[f"<{j}@exams.example>"] for j in fast]
    assert most_in_any_window(slow_at, 1.0) <= 4
    assert max(fast_at) < max(slow_at)  # the other domain is not held up behind slow.example
    assert [r.attempts for r in rows(db, slow + fast)] == [1] * 24
    assert (tmp_path / "huey.sqlite.ratelimit").exists()


# -- one delivery, driven directly: held back, not failed, not an attempt -----------------------

class Recording:
    """A transport that records what it sent (and can fail once)."""

    def __init__(self, fail_first: Exception | None = None) -> None:
        self.sent: list[str] = []
        self.fail_first = fail_first

    def send(self, message, sender, recipients):
        if self.fail_first is not None:
            error, self.fail_first = self.fail_first, None
            raise error
        self.sent.append(str(message["Message-ID"]))

    def close(self):
        pass


def deliver_with(db, limiter, transport, job):
    from huey import MemoryHuey

    from pyramid_examcache.mail.queue import MailQueue
    from pyramid_examcache.mail.tasks import deliver_job

    queue = MailQueue(parse_mail_settings({}), engine=db, transport=transport,
                      huey=MemoryHuey("t", results=False))
    return deliver_job(queue.settings, queue.resources, job, limiter=limiter)


def status(db, job) -> dict:
    with db.connect() as conn:
        return job_status(conn, job)


def test_a_throttled_job_is_delayed_and_keeps_its_attempts(db, tmp_path):
    import smtplib

    from huey.exceptions import RetryTask

    limiter = SendLimiter(SqliteWindows(str(tmp_path / "log.sqlite")), "t",
                          [Rate(1, 60, "1/m")], (), hold=30)
    transport = Recording(fail_first=smtplib.SMTPDataError(451, b"4.7.1 try later"))
    first, second = insert_job(db), insert_job(db)
    with pytest.raises(RetryTask):  # a transient failure: attempt 1 (and the slot is used)
        deliver_with(db, limiter, transport, first)
    assert status(db, first)["attempts"] == 1
    from pyramid_examcache.mail.outbox import utcnow

    before = utcnow()
    with pytest.raises(RetryTask) as info:  # no slot for a minute: held back
        deliver_with(db, limiter, transport, second)
    assert 59 < info.value.delay <= 60 * 1.2
    held = status(db, second)
    assert held["state"] == "delayed" and held["attempts"] == 0 and held["failedReason"] is None
    import datetime as dt

    next_at = dt.datetime.fromisoformat(held["nextAttemptAt"])
    assert next_at - before > dt.timedelta(seconds=59)
    from sqlalchemy import update

    with db.begin() as conn:  # the first job's retry comes due: throttled too, attempt kept
        conn.execute(update(outbox_table).where(outbox_table.c.id == first)
                     .values(next_attempt_at=utcnow()))
    with pytest.raises(RetryTask):
        deliver_with(db, limiter, transport, first)
    assert status(db, first)["attempts"] == 1 and status(db, first)["state"] == "delayed"
    assert transport.sent == []
    # an early queue entry of the held-back row finds nothing to do (not due yet)
    assert deliver_with(db, limiter, transport, second) == "skipped"


def test_an_unreachable_limiter_sends_nothing(db):
    import redis
    from huey.exceptions import RetryTask

    from ..conftest import free_port

    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    limiter = SendLimiter(RedisWindows(down), "t", [Rate(10, 1, "10/s")], (), hold=30)
    transport = Recording()
    job = insert_job(db)
    with pytest.raises(RetryTask) as info:
        deliver_with(db, limiter, transport, job)
    assert info.value.delay == 5.0
    held = status(db, job)
    assert held["state"] == "delayed" and held["attempts"] == 0
    assert transport.sent == []
    # with no limit configured, the same job is sent (once due)
    from sqlalchemy import update

    from pyramid_examcache.mail.outbox import utcnow

    with db.begin() as conn:
        conn.execute(update(outbox_table).where(outbox_table.c.id == job)
                     .values(next_attempt_at=utcnow()))
    assert deliver_with(db, None, transport, job) == "completed"
    assert len(transport.sent) == 1 and status(db, job)["attempts"] == 1
