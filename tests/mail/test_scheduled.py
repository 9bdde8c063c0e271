"""Scheduled mail: ``send_queued(..., send_at=...)`` / ``delay=``: ``delayed`` with
``nextAttemptAt`` until its due time, never sent earlier, kept across consumer restarts,
and sent at once from the admin page's "send now"."""
from __future__ import annotations

import datetime as dt
import signal
import time
import uuid

import pytest
from webtest import TestApp

from pyramid.csrf import CookieCSRFStoragePolicy

from pyramid_examcache.mail import Message
from pyramid_examcache.mail.outbox import DELAYED, claim, outbox_table, started_at, utcnow
from pyramid_examcache.mail.relay import push_one, relay
from pyramid_examcache.settings import parse_mail_settings
from pyramid_examcache.testing import get_mail_capture

from ..admin.support import ADMIN, HeaderPolicy, admin_app, csrf_of
from .helpers import insert_job, load
from .support import ConsumerProcess, make_app, wait_until, write_ini

S = dt.timedelta(seconds=1)


def later_view(request):
    """send_queued(**body) with ``send_at`` as ISO 8601; 400 with a ValueError's text."""
    body = dict(request.json_body)
    if body.get("send_at"):
        body["send_at"] = dt.datetime.fromisoformat(body["send_at"])
    try:
        if body.pop("message", False):  # pyramid_mailer's send, or (via) send_to_queue
            send = getattr(request.mailer, body.pop("via", "send"))
            job = send(Message(subject=body.pop("subject"), html=body.pop("html"),
                               recipients=[body.pop("to")]), **body)
        else:
            job = request.mailer.send_queued(**body)
    except ValueError as exc:
        request.response.status = 400
        return {"error": str(exc)}
    request.response.status = 201
    return {"jobId": job.id}


def promote_view(request):
    return {"promoted": request.mailer.promote(request.matchdict["job_id"])}


def views(config):
    config.add_route("later", "/later")
    config.add_view(later_view, route_name="later", renderer="json", request_method="POST")
    config.add_route("promote", "/jobs/{job_id}/promote")
    config.add_view(promote_view, route_name="promote", renderer="json", request_method="POST")


@pytest.fixture
def app(db, pg_url):
    def extra(config):
        config.include("pyramid_examcache.testing")
        views(config)

    return TestApp(make_app(pg_url, {"mail.default_sender": "no-reply@exams.example"},
                            engine=db, extra=extra))


def mail(**extra):
    return {"to": "ann@example.com", "subject": "Exam tomorrow", "html": "<p>x</p>", **extra}


class RecordingBroker:
    def __init__(self) -> None:
        self.pushed: list = []

    def push(self, job_id: str, eta=None) -> None:
        self.pushed.append((job_id, eta))



def queue_scheduled(app, consumer, delay: float) -> tuple[str, float]:
    """Queue a mail due in ``delay`` s through ``/later`` and wait until a worker moved it
    to Huey's schedule; its job id and due time on ``time.monotonic()``'s clock."""
    wall, mono = time.time(), time.monotonic()
    job_id = app.post_json("/later", mail(delay=delay), status=201).json["jobId"]
    due = dt.datetime.fromisoformat(app.get(f"/jobs/{job_id}").json["nextAttemptAt"])
    consumer.wait_for_log("Added task", timeout=10)  # a worker moved it to the schedule
    return job_id, mono + (due.timestamp() - wall)

def test_a_delayed_mail_is_delayed_until_its_due_time(app, db):
    before = utcnow()
    job_id = app.post_json("/later", mail(delay=3600), status=201).json["jobId"]
    status = app.get(f"/jobs/{job_id}").json
    due = dt.datetime.fromisoformat(status["nextAttemptAt"])
    assert before + 3600 * S <= due <= utcnow() + 3600 * S
    assert status == {"id": job_id, "state": "delayed", "progress": 0, "attempts": 0,
                      "failedReason": None, "nextAttemptAt": due.isoformat(),
                      "failedRecipients": None, "priority": "normal"}
    # the in-process queue ran the pushed task at once: the claim refused it, nothing was sent
    assert get_mail_capture(app).outbox == []
    row = load(db, job_id)
    assert row.send_at == due and row.enqueued_at == due  # pushed with the due time as eta
    assert started_at(row) == due  # mail.max_age counts from the due time
    with db.begin() as conn:
        assert claim(conn, job_id, 60, due - 0.01 * S) is None  # not a moment early
        assert claim(conn, job_id, 60, due).attempts == 1


def test_send_at_with_send_and_send_queued(app, db):
    at = (utcnow() + dt.timedelta(days=2)).replace(microsecond=0)
    paris = at.astimezone(dt.timezone(dt.timedelta(hours=1)))
    a = app.post_json("/later", mail(send_at=paris.isoformat()), status=201).json["jobId"]
    b = app.post_json("/later", mail(message=True, send_at=at.isoformat()),
                      status=201).json["jobId"]
    for job_id in (a, b):
        assert app.get(f"/jobs/{job_id}").json["nextAttemptAt"] == at.isoformat()
    # a due time already past sends at once
    c = app.post_json("/later", mail(send_at=(utcnow() - S).isoformat()), status=201).json["jobId"]
    d = app.post_json("/later", mail(message=True, delay=0), status=201).json["jobId"]
    assert [m.job_id for m in get_mail_capture(app).outbox] == [c, d]


def test_bad_schedules_are_refused(app, db):
    res = app.post_json("/later", mail(send_at="2030-01-01T10:00:00"), status=400)
    assert "send_at must be timezone-aware" in res.json["error"]
    res = app.post_json("/later", mail(delay=-1), status=400)
    assert "delay must be a finite number of seconds >= 0" in res.json["error"]
    with pytest.raises(TypeError, match="send_at or delay, not both"):
        app.post_json("/later", mail(delay=5, send_at="2030-01-01T10:00:00+00:00"))
    with pytest.raises(TypeError, match="delay must be a number"):
        app.post_json("/later", mail(delay="5"))
    with db.connect() as conn:
        assert conn.execute(outbox_table.select()).first() is None


def test_push_one_hands_the_due_time_to_the_queue(db):
    due = utcnow() + 600 * S
    job = insert_job(db, state=DELAYED, next_attempt_at=due, send_at=due)
    broker = RecordingBroker()
    assert push_one(db, broker, job)
    assert not push_one(db, broker, job)
    assert broker.pushed == [(job, due)] and load(db, job).enqueued_at == due
    settings = parse_mail_settings({})
    # pushed once with its eta: the relay does not push it again, before or at its time
    assert relay(db, broker, settings, now=due - S) == 0
    assert relay(db, broker, settings, now=due + S) == 0
    # a retry waiting in the fast phase is not pushed with an eta by push_one
    retrying = insert_job(db, state=DELAYED, attempts=1, next_attempt_at=due)
    assert not push_one(db, broker, retrying)


def test_a_scheduled_row_never_pushed_is_relayed_when_due(db):
    """The queue was down at the commit: the relay pushes the row when it is due, not before."""
    due = utcnow() + 600 * S
    job = insert_job(db, state=DELAYED, next_attempt_at=due, send_at=due)
    broker = RecordingBroker()
    settings = parse_mail_settings({})
    assert relay(db, broker, settings, now=due - S) == 0
    assert relay(db, broker, settings, now=due) == 1
    assert relay(db, broker, settings, now=due + S) == 0
    assert broker.pushed == [(job, None)]


def test_promote_sends_a_delayed_job_now(app, db):
    job_id = app.post_json("/later", mail(delay=3600), status=201).json["jobId"]
    assert app.post(f"/jobs/{job_id}/promote").json == {"promoted": True}
    [sent] = get_mail_capture(app).outbox
    assert sent.job_id == job_id
    row = load(db, job_id)
    assert row.state == "completed" and row.attempts == 1 and row.send_at <= utcnow()
    assert app.post(f"/jobs/{job_id}/promote").json == {"promoted": False}  # not delayed now
    assert app.post("/jobs/nosuchjob/promote").json == {"promoted": False}


def test_send_now_from_the_admin_page(db, pg_url):
    admin = admin_app(pg_url, engine=db)
    due = utcnow() + dt.timedelta(days=1)
    job = insert_job(db, state=DELAYED, next_attempt_at=due, send_at=due)
    page = admin.get(f"/_examcache/jobs/{job}", headers=ADMIN)
    assert "Scheduled for" in page.text and 'id="send-now"' in page.text
    # without the CSRF token: refused, nothing changes
    admin.post(f"/_examcache/jobs/{job}/send-now", {}, headers=ADMIN, status=400)
    assert load(db, job).state == DELAYED
    done = page.forms["send-now"].submit(headers=ADMIN, status=303)
    assert done.location.endswith(f"/_examcache/jobs/{job}?done=promoted")
    assert load(db, job).state == "completed"
    assert [m.job_id for m in get_mail_capture(admin).outbox] == [job]
    after = done.follow(headers=ADMIN)
    assert "sent now, not at its scheduled time" in after.text and 'id="send-now"' not in after.text
    token = csrf_of(admin.get("/_examcache/cache", headers=ADMIN))
    page = admin.post(f"/_examcache/jobs/{job}/send-now", {"csrf_token": token}, headers=ADMIN,
                      status=409)
    assert "only a delayed job can be sent now; this one is completed" in page.text


# -- the real consumer, killed and restarted before the due time -------------------------------

@pytest.mark.e2e
def test_a_scheduled_mail_survives_a_consumer_restart(db, pg_url, smtp_server, private_redis,
                                                      tmp_path):
    settings = {"sqlalchemy.url": pg_url, "mail.transport": "smtp", "mail.host": "127.0.0.1",
                "mail.port": smtp_server.port, "mail.default_sender": "no-reply@exams.example",
                "mail.queue_url": private_redis.url,
                "mail.queue_name": f"mailtest-{uuid.uuid4().hex[:8]}",
                "mail.relay_interval": "1", "mail.workers": "2", "mail.lease": "3"}
    app = TestApp(make_app(pg_url, settings, engine=db, extra=views))
    ini = write_ini(str(tmp_path / "mail.ini"), settings)
    consumer = ConsumerProcess(ini, str(tmp_path / "consumer.log"))
    consumer.start()
    try:
        job_id, due_mono = queue_scheduled(app, consumer, delay=6)
        assert consumer.kill(signal.SIGKILL) == -signal.SIGKILL
        consumer.start()  # before the due time
        assert time.monotonic() < due_mono - 1 and smtp_server.handler.attempts == []
        wait_until(lambda: smtp_server.handler.attempts, timeout=30, message="delivered")
        [attempt] = smtp_server.handler.attempts
        assert attempt.at >= due_mono - 0.05  # not early (the clocks agree to a few ms)
        assert attempt.message_id == f"<{job_id}@exams.example>"
        wait_until(lambda: load(db, job_id).state == "completed", message="completed")
        consumer.wait_for_rounds(3)  # a second push would have been delivered by now
        assert len(smtp_server.handler.attempts) == 1 and load(db, job_id).attempts == 1
    finally:
        consumer.stop()


@pytest.mark.e2e
def test_scheduled_mails_by_every_api_survive_a_kill_and_a_restart(db, pg_url, smtp_server,
                                                                   private_redis, tmp_path):
    """Four mails scheduled through send_queued, send and send_to_queue (due in 5, 9 and 11 s,
    and one in an hour); the consumer is SIGKILLed once all four are in its schedule, and
    stopped (SIGTERM) and started again after the first is delivered. Each of the three
    arrives once, never before its due time; the hour-ahead one is still waiting, untried."""
    settings = {"sqlalchemy.url": pg_url, "mail.transport": "smtp", "mail.host": "127.0.0.1",
                "mail.port": smtp_server.port, "mail.default_sender": "no-reply@exams.example",
                "mail.queue_url": private_redis.url,
                "mail.queue_name": f"mailtest-{uuid.uuid4().hex[:8]}",
                "mail.relay_interval": "1", "mail.workers": "2", "mail.lease": "3"}
    app = TestApp(make_app(pg_url, settings, engine=db, extra=views))
    consumer = ConsumerProcess(write_ini(str(tmp_path / "mail.ini"), settings),
                               str(tmp_path / "consumer.log"))
    consumer.start()
    try:
        wall, mono = time.time(), time.monotonic()
        later = utcnow() + 9 * S
        jobs = [app.post_json("/later", body, status=201).json["jobId"] for body in (
            mail(to="a@example.com", delay=5),
            mail(to="b@example.com", message=True, send_at=later.isoformat()),
            mail(to="c@example.com", message=True, via="send_to_queue", delay=11),
            mail(to="d@example.com", delay=3600))]
        due_mono = {j: mono + (load(db, j).send_at.timestamp() - wall) for j in jobs}
        consumer.wait_for_log("Added task", timeout=15, count=4)  # all four in the schedule
        for job_id in jobs:  # the outbox holds the due time; the status shows it
            status = app.get(f"/jobs/{job_id}").json
            assert (status["state"], status["attempts"]) == ("delayed", 0), status
            assert status["nextAttemptAt"] == load(db, job_id).send_at.isoformat()
        assert consumer.kill(signal.SIGKILL) == -signal.SIGKILL
        consumer.start()
        first = f"<{jobs[0]}@exams.example>"
        wait_until(lambda: first in smtp_server.accepted_ids(), timeout=30, message="a's mail")
        assert time.monotonic() < due_mono[jobs[1]] - 1  # b and c still ahead
        consumer.stop()
        consumer.start()
        expected = sorted(f"<{j}@exams.example>" for j in jobs[:3])
        wait_until(lambda: len(smtp_server.handler.attempts) >= 3, timeout=30, message="3 sent")
        wait_until(lambda: all(load(db, j).state == "completed" for j in jobs[:3]),
                   message="completed")
        consumer.wait_for_rounds(3)  # a second push would have been delivered by now
        assert sorted(a.message_id for a in smtp_server.handler.attempts) == expected
        for attempt in smtp_server.handler.attempts:
            job = attempt.message_id.strip("<>").partition("@")[0]
            assert attempt.at >= due_mono[job] - 0.05, job  # not early
        assert [load(db, j).attempts for j in jobs] == [1, 1, 1, 0]
        assert load(db, jobs[3]).state == DELAYED
    finally:
        consumer.stop()


@pytest.mark.e2e
def test_a_scheduled_mail_due_while_no_consumer_runs_is_sent_at_start(db, pg_url, smtp_server,
                                                                      private_redis, tmp_path):
    settings = {"sqlalchemy.url": pg_url, "mail.transport": "smtp", "mail.host": "127.0.0.1",
                "mail.port": smtp_server.port, "mail.default_sender": "no-reply@exams.example",
                "mail.queue_url": private_redis.url,
                "mail.queue_name": f"mailtest-{uuid.uuid4().hex[:8]}",
                "mail.relay_interval": "1"}
    app = TestApp(make_app(pg_url, settings, engine=db, extra=views))
    job_id = app.post_json("/later", mail(delay=1), status=201).json["jobId"]
    assert load(db, job_id).state == DELAYED
    wait_until(lambda: utcnow() > load(db, job_id).next_attempt_at, message="due")
    consumer = ConsumerProcess(write_ini(str(tmp_path / "mail.ini"), settings),
                               str(tmp_path / "consumer.log"))
    consumer.start()
    try:
        wait_until(lambda: load(db, job_id).state == "completed", timeout=30, message="sent")
        consumer.wait_for_rounds(3)
        assert smtp_server.accepted_ids() == [f"<{job_id}@exams.example>"]
    finally:
        consumer.stop()


@pytest.mark.e2e
def test_send_now_from_the_admin_page_through_the_consumer(db, pg_url, smtp_server, private_redis,
                                                           tmp_path):
    """A mail scheduled 10 s ahead, already in the consumer's schedule: the admin page's
    "Send now" has aiosmtpd receive it at once; at its old due time the schedule's entry
    runs and finds nothing to do -- one delivery, one attempt."""
    settings = {"sqlalchemy.url": pg_url, "mail.transport": "smtp", "mail.host": "127.0.0.1",
                "mail.port": smtp_server.port, "mail.default_sender": "no-reply@exams.example",
                "mail.queue_url": private_redis.url,
                "mail.queue_name": f"mailtest-{uuid.uuid4().hex[:8]}",
                "mail.relay_interval": "1", "mail.workers": "2", "mail.lease": "3"}

    def extra(config):
        config.set_security_policy(HeaderPolicy())
        config.set_csrf_storage_policy(CookieCSRFStoragePolicy(httponly=True))
        views(config)

    app = TestApp(make_app(pg_url, {**settings, "examcache.redis_url": "memory://",
                                    "examcache.admin_path": "/_examcache/"},
                           engine=db, include="pyramid_examcache", extra=extra))
    consumer = ConsumerProcess(write_ini(str(tmp_path / "mail.ini"), settings),
                               str(tmp_path / "consumer.log"))
    consumer.start()
    try:
        job_id, due_mono = queue_scheduled(app, consumer, delay=10)
        page = app.get(f"/_examcache/jobs/{job_id}", headers=ADMIN)
        assert smtp_server.handler.attempts == [] and load(db, job_id).state == DELAYED
        page.forms["send-now"].submit(headers=ADMIN, status=303)
        wait_until(lambda: smtp_server.handler.attempts, timeout=10, message="sent now")
        [attempt] = smtp_server.handler.attempts
        assert attempt.at < due_mono - 3  # well before its scheduled time
        assert attempt.message_id == f"<{job_id}@exams.example>"
        wait_until(lambda: load(db, job_id).state == "completed", message="completed")
        # the schedule's own entry runs at the old due time and finds the job done
        consumer.wait_for_log(f"mail {job_id}: nothing to do", timeout=30)
        consumer.wait_for_rounds(2)
        assert len(smtp_server.handler.attempts) == 1 and load(db, job_id).attempts == 1
    finally:
        consumer.stop()
