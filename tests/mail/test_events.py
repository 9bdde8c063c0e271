"""Outcome hooks: MailDelivered and MailFailed reach ``config.add_subscriber`` subscribers --
in ``examcache-consumer --app`` (a real consumer process, aiosmtpd, PostgreSQL, Redis), in
the in-process test queue, and from the delivery task itself (expiry, a failing subscriber)."""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid

import pytest
from webtest import TestApp

from pyramid_examcache.mail.events import MailDelivered, MailFailed
from pyramid_examcache.mail.outbox import COMPLETED, FAILED, utcnow
from pyramid_examcache.mail.tasks import deliver_job
from pyramid_examcache.testing import mail_testing_settings

from .helpers import insert_job, load
from .support import ConsumerProcess, make_app, wait_until, write_ini
from .test_tasks import ScriptedTransport, greylist, make_queue

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SENDER = "no-reply@exams.example"


@pytest.fixture
def events_system(smtp_server, db, pg_url, private_redis, tmp_path, monkeypatch):
    """(web app, consumer --app, read_events): the consumer loads tests.mail.events_app,
    whose subscribers append every event to a file."""
    system = build_events_system(smtp_server, db, pg_url, private_redis, tmp_path, monkeypatch)
    yield system
    system[1].stop()


@pytest.fixture
def expiring_events_system(smtp_server, db, pg_url, private_redis, tmp_path, monkeypatch):
    """The same, with mail.max_age = 3 s and quick retries: transient failures expire."""
    system = build_events_system(smtp_server, db, pg_url, private_redis, tmp_path, monkeypatch,
                                 **{"mail.max_age": "3", "mail.retry_delay": "0.5",
                                    "mail.max_retry_delay": "1"})
    yield system
    system[1].stop()


def build_events_system(smtp_server, db, pg_url, private_redis, tmp_path, monkeypatch,
                        **overrides):
    events_file = tmp_path / "events.jsonl"
    settings = {"sqlalchemy.url": pg_url, "mail.transport": "smtp", "mail.host": "127.0.0.1",
                "mail.port": str(smtp_server.port), "mail.default_sender": SENDER,
                "mail.queue_url": private_redis.url,
                "mail.queue_name": f"mailtest-{uuid.uuid4().hex[:8]}",
                "mail.relay_interval": "1", "mail.workers": "1", "mail.lease": "3",
                "mail.shutdown_timeout": "5", "test.events_file": str(events_file), **overrides}
    ini = write_ini(str(tmp_path / "mail.ini"), settings)
    with open(ini) as fh:
        text = fh.read().replace("use = egg:examcache_demo", "use = call:tests.mail.events_app:main")
    with open(ini, "w") as fh:
        fh.write(text)
    monkeypatch.setenv("PYTHONPATH", ROOT)
    consumer = ConsumerProcess(ini, str(tmp_path / "consumer.log"), args=["--app"])

    def read_events() -> list[dict]:
        if not events_file.exists():
            return []
        return [json.loads(line) for line in events_file.read_text().splitlines()]

    return TestApp(make_app(pg_url, settings, engine=db)), consumer, read_events


def send(testapp, to, subject="Hello") -> str:
    return testapp.post_json("/send", {"to": to, "subject": subject, "html": "<p>Hi</p>"},
                             status=201).json["jobId"]


def event_for(read_events, job_id: str) -> dict:
    return wait_until(lambda: next((e for e in read_events() if e["job"]["id"] == job_id), None),
                      timeout=30, message=f"the event of {job_id}")


def test_the_consumer_notifies_the_apps_subscribers(events_system, smtp_server):
    testapp, consumer, read_events = events_system
    consumer.start()
    smtp_server.handler.replies = ["554 5.7.1 rejected as spam"]
    spam = send(testapp, "eve@example.com", "Spam?")
    failed = event_for(read_events, spam)
    assert failed["event"] == "MailFailed" and failed["permanent"] is True
    assert failed["reason"] == "554 5.7.1 rejected as spam" and failed["expired"] is False
    assert failed["job"]["subject"] == "Spam?" and failed["recipients"] == ["eve@example.com"]
    assert failed["job"]["message_id"] == f"<{spam}@exams.example>"

    smtp_server.handler.refuse = {"bad@example.com": "550 5.1.1 no such user",
                                  "gone@example.com": "550 5.1.1 gone"}
    ok = send(testapp, "ann@example.com", "Welcome")
    partly = send(testapp, ["bob@example.com", "bad@example.com"], "Partly")
    nobody = send(testapp, "gone@example.com", "Nobody")
    delivered = event_for(read_events, ok)
    assert delivered["event"] == "MailDelivered" and delivered["refused"] == {}
    assert delivered["job"]["subject"] == "Welcome" and delivered["job"]["attempts"] == 1
    assert delivered["recipients"] == ["ann@example.com"]
    some = event_for(read_events, partly)
    assert some["event"] == "MailDelivered"
    assert some["recipients"] == ["bob@example.com", "bad@example.com"]
    assert some["refused"] == {"bad@example.com": "550 5.1.1 no such user"}
    none = event_for(read_events, nobody)
    assert none["event"] == "MailFailed" and none["permanent"] is True
    assert none["refused"] == {"gone@example.com": "550 5.1.1 gone"}
    consumer.wait_for_rounds(2)  # one event per job, nothing more
    assert sorted(e["job"]["id"] for e in read_events()) == sorted([spam, ok, partly, nobody])


def test_the_consumer_notifies_an_expired_mail_with_its_reason_and_refusals(
        expiring_events_system, smtp_server, db):
    """Transient failures until mail.max_age (3 s): one MailFailed per job, expired (not
    permanent), the reason naming the limit and the last reply, and the recipients refused
    with a 4xx; the row says the same."""
    testapp, consumer, read_events = expiring_events_system
    smtp_server.handler.refuse = {"busy@example.com": "450 4.2.1 mailbox busy"}
    smtp_server.handler.replies = ["451 4.7.1 greylisted"] * 100
    consumer.start()
    busy = send(testapp, "busy@example.com", "Busy")
    grey = send(testapp, "grey@example.com", "Grey")
    for job_id, last_reply, refused in [
            (busy, "busy@example.com: 450 4.2.1 mailbox busy",
             {"busy@example.com": "450 4.2.1 mailbox busy"}),
            (grey, "451 4.7.1 greylisted", {})]:
        event = event_for(read_events, job_id)
        assert event["event"] == "MailFailed", event
        assert event["expired"] is True and event["permanent"] is False
        attempts = event["job"]["attempts"]
        assert attempts >= 2  # retried before it expired
        assert event["reason"] == f"gave up after {attempts} attempts (mail.max_age): {last_reply}"
        assert event["refused"] == refused
        assert event["job"]["message_id"] == f"<{job_id}@exams.example>"
        status = testapp.get(f"/jobs/{job_id}").json
        assert status["state"] == "failed" and status["failedReason"] == event["reason"]
        assert status["failedRecipients"] == (refused or None)
    consumer.wait_for_rounds(2)  # one event per job, nothing more
    assert sorted(e["job"]["id"] for e in read_events()) == sorted([busy, grey])
    assert smtp_server.handler.accepted == []


def test_the_in_process_test_queue_notifies_too(db, pg_url):
    seen = []

    def subscribers(config):
        config.add_subscriber(seen.append, MailDelivered)
        config.add_subscriber(seen.append, MailFailed)

    settings = {**mail_testing_settings(), "mail.default_sender": SENDER}
    app = make_app(pg_url, settings, engine=db, extra=lambda c: (
        c.include("pyramid_examcache.testing"), subscribers(c)))
    job = TestApp(app).post_json("/register", {"email": "kim@example.com"}, status=201).json["jobId"]
    [event] = seen
    assert isinstance(event, MailDelivered) and event.job.id == job
    assert event.job.recipients == ["kim@example.com"] and event.job.subject == "Welcome"


def test_expiry_is_a_failure_that_is_not_permanent(db):
    queue = make_queue(db, ScriptedTransport(greylist()), max_age=3600)
    events = []
    queue.resources.notify = events.append
    job = insert_job(db, created_at=utcnow() - dt.timedelta(seconds=3601))
    assert deliver_job(queue.settings, queue.resources, job) == FAILED
    [event] = events
    assert isinstance(event, MailFailed) and event.job.id == job
    assert event.expired and not event.permanent
    assert event.reason == "gave up after 1 attempts (mail.max_age): 451 4.7.1 greylisted"


def test_a_failing_subscriber_changes_nothing(db, caplog):
    transport = ScriptedTransport()
    queue = make_queue(db, transport)

    def broken(event):
        raise RuntimeError("subscriber bug")

    queue.resources.notify = broken
    job = insert_job(db)
    with caplog.at_level(logging.ERROR, logger="pyramid_examcache.mail.tasks"):
        assert deliver_job(queue.settings, queue.resources, job) == COMPLETED
    assert load(db, job).state == COMPLETED and len(transport.sent) == 1
    assert "a subscriber of MailDelivered failed" in caplog.text
