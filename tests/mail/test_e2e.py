"""End to end: the web app (WebTest, real commits) -> PostgreSQL outbox -> Redis (a private
redis-server) -> ``examcache-consumer`` subprocess -> aiosmtpd. Real sleeps only here."""
from __future__ import annotations

import datetime as dt
import signal
import time
import uuid

import pytest
from sqlalchemy import select
from webtest import TestApp

from pyramid_examcache.mail.outbox import outbox_table
from pyramid_examcache.mail.tasks import PURGE

from .support import ConsumerProcess, make_app, wait_until, write_ini

pytestmark = pytest.mark.e2e


@pytest.fixture
def mail_settings(smtp_server, private_redis, pg_url):
    return {
        "sqlalchemy.url": pg_url,
        "mail.transport": "smtp",
        "mail.host": "127.0.0.1",
        "mail.port": smtp_server.port,
        "mail.default_sender": "no-reply@exams.example",
        "mail.queue_url": private_redis.url,
        "mail.queue_name": f"mailtest-{uuid.uuid4().hex[:8]}",
        "mail.retry_delay": "0.5",
        "mail.relay_interval": "1",
        "mail.workers": "2",
        "mail.lease": "3",
        "mail.shutdown_timeout": "5",
    }


@pytest.fixture
def system(db, pg_url, mail_settings, tmp_path):
    """Builds (web app, consumer) from one settings dict; consumers are stopped afterwards."""
    consumers: list[ConsumerProcess] = []

    def build(**overrides):
        settings = {**mail_settings, **{k: str(v) for k, v in overrides.items()}}
        app = make_app(pg_url, settings, engine=db)
        ini = write_ini(str(tmp_path / "mail.ini"), settings)
        consumer = ConsumerProcess(ini, str(tmp_path / "consumer.log"))
        consumers.append(consumer)
        return TestApp(app), consumer

    yield build
    for consumer in consumers:
        consumer.stop()


def row(engine, job_id):
    with engine.connect() as conn:
        return conn.execute(select(outbox_table).where(outbox_table.c.id == job_id)).first()


def state_of(testapp, job_id):
    res = testapp.get(f"/jobs/{job_id}", expect_errors=True)
    return res.json if res.status_int == 200 else None


def test_committed_mail_delivered_once_aborted_never(system, smtp_server, db):
    """M1: a committed send is delivered exactly once; an aborted one never."""
    testapp, consumer = system()
    consumer.start()
    job_id = testapp.post_json("/register", {"email": "ann@example.com"}, status=201).json["jobId"]
    with pytest.raises(RuntimeError):
        testapp.post_json("/register", {"email": "bob@example.com", "fail": True})
    wait_until(lambda: (state_of(testapp, job_id) or {}).get("state") == "completed",
               message="completed")
    # two relay rounds after the delivery (and what they could have queued, before a
    # third): nothing else may arrive
    consumer.wait_for_rounds(3)
    assert smtp_server.accepted_ids() == [f"<{job_id}@exams.example>"]
    [msg] = smtp_server.handler.accepted
    assert msg["To"] == "ann@example.com" and msg["Subject"] == "Welcome"
    assert state_of(testapp, job_id) == {"id": job_id, "state": "completed", "progress": 100,
                                         "attempts": 1, "failedReason": None,
                                         "nextAttemptAt": None, "failedRecipients": None,
                                         "priority": "normal"}
    with db.connect() as conn:
        assert conn.execute(select(outbox_table.c.id)).scalars().all() == [job_id]


def test_redis_down_at_commit_mail_delivered_when_it_returns(system, smtp_server, private_redis, db):
    """M2: the broker is unreachable at commit time; the request still succeeds and the
    mail goes out once Redis is back (periodic relay)."""
    testapp, consumer = system()
    consumer.start()
    private_redis.stop()
    started = time.monotonic()
    jobs = [testapp.post_json("/register", {"email": f"u{i}@example.com"}, status=201).json["jobId"]
            for i in range(3)]
    assert time.monotonic() - started < 3.0  # a dead broker costs little per request
    assert smtp_server.handler.accepted == []  # no synchronous fallback in the request
    for job_id in jobs:
        r = row(db, job_id)
        assert r.state == "waiting" and r.enqueued_at is None
    # the consumer is running against the dead broker, and sends nothing meanwhile
    consumer.wait_for_log("Error reading from queue", timeout=15)
    assert smtp_server.handler.accepted == []
    private_redis.start()
    wait_until(lambda: len(smtp_server.handler.accepted) == 3, timeout=20, message="3 delivered")
    assert sorted(smtp_server.accepted_ids()) == sorted(f"<{j}@exams.example>" for j in jobs)
    for job_id in jobs:
        assert state_of(testapp, job_id)["state"] == "completed"


def test_consumer_killed_mid_send_is_delivered_after_restart(system, smtp_server, db):
    """M2: SIGKILL while the mail is in flight (SMTP RCPT stalls); the row is left
    'active'; the restarted consumer re-queues it once its lease expires."""
    testapp, consumer = system()
    smtp_server.handler.rcpt_delays = [6.0]
    consumer.start()
    job_id = testapp.post_json("/register", {"email": "kim@example.com"}, status=201).json["jobId"]
    assert smtp_server.handler.rcpt_seen.wait(10)
    consumer.kill()
    r = row(db, job_id)
    assert r.state == "active" and r.attempts == 1
    assert smtp_server.handler.accepted == []
    consumer.start()
    wait_until(lambda: smtp_server.handler.accepted, timeout=20, message="delivered")
    wait_until(lambda: state_of(testapp, job_id)["state"] == "completed", message="completed")
    consumer.wait_for_rounds(3)  # a re-queue by the relay would have been sent by now
    assert smtp_server.accepted_ids() == [f"<{job_id}@exams.example>"]
    assert state_of(testapp, job_id)["attempts"] == 2


def test_transient_failures_retry_with_exponential_backoff(system, smtp_server, db):
    """M3: 451, 451, 250 -> delivered on the 3rd attempt after waits of ~2 s and ~4 s."""
    testapp, consumer = system(**{"mail.retry_delay": 2, "mail.retry_backoff": 2})
    smtp_server.handler.replies = ["451 4.3.0 Try again later", "451 4.3.0 Try again later"]
    consumer.start()
    job_id = testapp.post_json("/register", {"email": "lee@example.com"}, status=201).json["jobId"]
    seen = set()

    def done():
        status = state_of(testapp, job_id)
        seen.add(status["state"])
        return status["state"] == "completed"

    wait_until(done, timeout=20, interval=0.1, message="completed")
    status = state_of(testapp, job_id)
    assert status["attempts"] == 3 and status["failedReason"] is None
    assert "delayed" in seen
    attempts = smtp_server.handler.attempts
    assert [a.reply[:3] for a in attempts] == ["451", "451", "250"]
    assert {a.message_id for a in attempts} == {f"<{job_id}@exams.example>"}
    first_wait = attempts[1].at - attempts[0].at
    second_wait = attempts[2].at - attempts[1].at
    assert 2.0 <= first_wait < 3.0, first_wait
    assert 4.0 <= second_wait < 5.0, second_wait


def test_permanent_failure_fails_at_once(system, smtp_server, db):
    """M3: 550 -> failed after one attempt, with the SMTP reply as failedReason."""
    testapp, consumer = system()
    smtp_server.handler.replies = ["550 5.1.1 <nobody@example.com>: user unknown"]
    consumer.start()
    job_id = testapp.post_json("/register", {"email": "nobody@example.com"}, status=201).json["jobId"]
    wait_until(lambda: state_of(testapp, job_id)["state"] == "failed", message="failed")
    # a retry (mail.retry_delay = 0.5 s) or a re-queue by the relay would have run by now
    consumer.wait_for_rounds(3)
    assert state_of(testapp, job_id) == {
        "id": job_id, "state": "failed", "progress": 100, "attempts": 1,
        "failedReason": "550 5.1.1 <nobody@example.com>: user unknown",
        "nextAttemptAt": None, "failedRecipients": None,
                                         "priority": "normal"}
    assert len(smtp_server.handler.attempts) == 1 and smtp_server.handler.accepted == []


def test_status_retention(system, smtp_server, db):
    """M4: completed jobs are purged after mail.keep_completed; failed ones are kept."""
    testapp, consumer = system(**{"mail.keep_completed": 1, "mail.keep_failed": 3600})
    smtp_server.handler.replies = ["250 ok", "550 5.7.1 rejected"]
    consumer.start()
    ok = testapp.post_json("/register", {"email": "ok@example.com"}, status=201).json["jobId"]
    wait_until(lambda: (state_of(testapp, ok) or {}).get("state") == "completed", message="done")
    bad = testapp.post_json("/register", {"email": "bad@example.com"}, status=201).json["jobId"]
    wait_until(lambda: (state_of(testapp, bad) or {}).get("state") == "failed", message="failed")
    wait_until(lambda: state_of(testapp, ok) is None, timeout=6, message="completed purged")
    testapp.get(f"/jobs/{ok}", status=404)
    consumer.wait_for_rounds(2, task=PURGE)  # purges that removed a completed job keep it
    assert state_of(testapp, bad)["state"] == "failed"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_stop_gracefully(system, smtp_server, db, sig):
    """SIGTERM or SIGINT while a mail is in flight: the consumer finishes it, then exits 0."""
    testapp, consumer = system()
    smtp_server.handler.rcpt_delays = [1.5]
    consumer.start()
    job_id = testapp.post_json("/register", {"email": "tim@example.com"}, status=201).json["jobId"]
    assert smtp_server.handler.rcpt_seen.wait(10)
    assert consumer.kill(sig) == 0
    assert state_of(testapp, job_id)["state"] == "completed"
    assert smtp_server.accepted_ids() == [f"<{job_id}@exams.example>"]


def test_sqlite_queue_and_file_transport(db, pg_url, tmp_path):
    """The embedded set-up: SqliteHuey queue and .eml files, through the same consumer."""
    settings = {"sqlalchemy.url": pg_url, "mail.queue_url": "sqlite:///huey.sqlite",
                "mail.transport": "file", "mail.file_dir": "mail",
                "mail.default_sender": "no-reply@exams.example", "mail.relay_interval": "1"}
    ini = write_ini(str(tmp_path / "dev.ini"), settings)
    app_settings = {**settings, "mail.queue_url": f"sqlite:///{tmp_path}/huey.sqlite"}
    testapp = TestApp(make_app(pg_url, app_settings, engine=db))
    consumer = ConsumerProcess(ini, str(tmp_path / "consumer.log"))
    consumer.start()
    try:
        job_id = testapp.post_json("/register", {"email": "eve@example.com"}, status=201).json["jobId"]
        [eml] = wait_until(lambda: list((tmp_path / "mail").glob("*.eml")), message="an .eml file")
        assert f"{job_id}@exams.example" in eml.name
        wait_until(lambda: state_of(testapp, job_id)["state"] == "completed", message="completed")
    finally:
        consumer.stop()


def test_consumer_start_up_relays_mail_committed_while_redis_was_down(system, smtp_server,
                                                                      private_redis, db):
    """M2: no consumer, Redis down at commit; a consumer started later (periodic relay far
    away: 60 s) pushes the waiting rows in its start-up relay."""
    testapp, consumer = system(**{"mail.relay_interval": 60})
    private_redis.stop()
    job_id = testapp.post_json("/register", {"email": "sam@example.com"}, status=201).json["jobId"]
    assert row(db, job_id).enqueued_at is None
    private_redis.start()
    consumer.start()
    assert "start-up relay: 1 mail(s) pushed" in consumer.log()
    wait_until(lambda: smtp_server.handler.accepted, timeout=10, message="delivered")
    assert smtp_server.accepted_ids() == [f"<{job_id}@exams.example>"]


def test_smtp_outage_of_a_minute_loses_nothing(system, smtp_server, db, mail_settings):
    """M3, two phases: the sink is down for >= 60 s while 10 mails are queued. After the
    fast retries the jobs stay 'delayed' with a nextAttemptAt, and no broker entry holds
    their wait; when the sink is back, all 10 arrive exactly once, within a bound.
    Before: every job was 'failed' for good after ~14 s (retries 2, 4, 8 s)."""
    from pyramid_examcache.mail.queue import make_huey
    from pyramid_examcache.settings import parse_mail_settings

    overrides = {"mail.retry_delay": 0.5, "mail.retries": 2, "mail.max_retry_delay": 5,
                 "mail.relay_interval": 1, "mail.max_age": 3600}
    testapp, consumer = system(**overrides)
    consumer.start()
    smtp_server.stop()
    down_at = time.monotonic()
    jobs = [testapp.post_json("/register", {"email": f"out{i}@example.com"}, status=201)
            .json["jobId"] for i in range(10)]

    def statuses():
        return [state_of(testapp, j) for j in jobs]

    # past the fast phase (0.5 + 1 s): every job is waiting in the outbox only
    wait_until(lambda: all(s["state"] == "delayed" and s["attempts"] > 2 for s in statuses()),
               timeout=20, message="all delayed in the slow phase")
    huey = make_huey(parse_mail_settings({**mail_settings, **{k: str(v) for k, v in
                                                               overrides.items()}}))
    samples = 0
    while time.monotonic() - down_at < 62:
        for status in statuses():
            assert status["state"] in ("delayed", "active"), status
            if status["state"] == "delayed":
                next_at = dt.datetime.fromisoformat(status["nextAttemptAt"])
                assert next_at.tzinfo is not None
                assert status["failedReason"] and "Connection" in status["failedReason"]
        assert huey.scheduled_count() == 0  # nothing in the broker holds a long wait
        samples += 1
        time.sleep(2)
    assert samples >= 20
    attempts_during_outage = max(s["attempts"] for s in statuses())
    assert 5 <= attempts_during_outage <= 20, attempts_during_outage  # capped backoff, no spin
    smtp_server.restart()
    back_at = time.monotonic()
    # the cap (5 s) + one relay interval (1 s) + a margin
    wait_until(lambda: len(smtp_server.handler.accepted) >= 10, timeout=15,
               message="10 delivered")
    assert time.monotonic() - back_at < 15
    wait_until(lambda: all(s["state"] == "completed" for s in statuses()), timeout=10,
               message="all completed")
    consumer.wait_for_rounds(3)
    ids = smtp_server.accepted_ids()
    assert sorted(ids) == sorted(f"<{j}@exams.example>" for j in jobs)  # each exactly once
    for status in statuses():
        assert status["nextAttemptAt"] is None and status["failedReason"] is None


def test_failed_job_retried_is_delivered_once(system, smtp_server, db):
    """request.mailer.retry(job_id): a failed job goes back to 'waiting' (same Message-ID,
    attempts restart) and is delivered once; unknown or not-failed jobs answer False."""
    testapp, consumer = system()
    smtp_server.handler.replies = ["554 5.7.1 policy rejection"]
    consumer.start()
    job_id = testapp.post_json("/register", {"email": "rae@example.com"}, status=201).json["jobId"]
    wait_until(lambda: state_of(testapp, job_id)["state"] == "failed", message="failed")
    assert testapp.post(f"/jobs/{job_id}/retry").json == {"retried": True}
    assert testapp.post(f"/jobs/{job_id}/retry").json == {"retried": False}  # not failed now
    assert testapp.post("/jobs/nosuchjob/retry").json == {"retried": False}
    wait_until(lambda: state_of(testapp, job_id)["state"] == "completed", message="completed")
    consumer.wait_for_rounds(3)
    assert smtp_server.accepted_ids() == [f"<{job_id}@exams.example>"]
    status = state_of(testapp, job_id)
    assert status["attempts"] == 1 and status["failedReason"] is None
    assert testapp.post(f"/jobs/{job_id}/retry").json == {"retried": False}  # completed


def test_bcc_delivered_never_in_headers_and_refused_recipients_recorded(system, smtp_server, db):
    """bcc goes in the envelope only (the received bytes are checked); a recipient refused
    while others are accepted is recorded as failedRecipients (the job is completed);
    all refused with 5xx is a permanent failure. Before: a visible Bcc: header, not
    delivered; refusals ignored."""
    testapp, consumer = system()
    smtp_server.handler.refuse = {"gone@example.com": "550 5.1.1 no such user",
                                  "gone2@example.com": "550 5.1.1 no such user"}
    consumer.start()
    body = {"to": "ann@example.com", "cc": "gone@example.com",
            "bcc": ["secret@example.org", "Hidden Two <two@example.org>"],
            "subject": "S", "html": "<p>x</p>"}
    job_id = testapp.post_json("/send", body, status=201).json["jobId"]
    wait_until(lambda: state_of(testapp, job_id)["state"] == "completed", message="completed")
    [(rcpts, raw)] = smtp_server.handler.received
    assert sorted(rcpts) == ["ann@example.com", "secret@example.org", "two@example.org"]
    assert b"secret" not in raw and b"two@" not in raw and b"Bcc" not in raw
    assert b"Cc: gone@example.com" in raw
    status = state_of(testapp, job_id)
    assert status["failedRecipients"] == {"gone@example.com": "550 5.1.1 no such user"}
    bad = testapp.post_json("/send", {"to": ["gone@example.com", "gone2@example.com"],
                                      "subject": "S", "html": "x"}, status=201).json["jobId"]
    wait_until(lambda: state_of(testapp, bad)["state"] == "failed", message="failed")
    status = state_of(testapp, bad)
    assert status["attempts"] == 1 and status["failedReason"].startswith("all recipients refused")
    assert set(status["failedRecipients"]) == {"gone@example.com", "gone2@example.com"}
