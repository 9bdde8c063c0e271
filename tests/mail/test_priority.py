"""Mail priorities: ``send_queued(priority=...)`` and ``mail.default_priority``, stored in the
outbox, shown by the status and kept by every push -- and, end to end, a high-priority mail
queued behind a backlog of 5,000 low-priority mails is delivered within seconds by the
``examcache-consumer`` process (PostgreSQL outbox, aiosmtpd, a private Redis; the SQLite
queue too)."""
from __future__ import annotations

import time
import uuid

import pytest
from pyramid.exceptions import ConfigurationError
from pyramid.scripting import prepare
from sqlalchemy import func, select
from webtest import TestApp

from pyramid_examcache.mail.outbox import outbox_table
from pyramid_examcache.mail.priority import PRIORITIES
from pyramid_examcache.mail.relay import push_one, relay
from pyramid_examcache.settings import parse_mail_settings

from .support import ConsumerProcess, make_app, wait_until, write_ini

SENDER = "no-reply@exams.example"
BACKLOG = 5000


def bulk_view(request):
    """Queue ``n`` mails of ``priority`` in this request's one transaction (the public API)."""
    body = request.json_body
    ids = [request.mailer.send_queued(f"bulk{i}@example.com", "Newsletter", "<p>news</p>",
                                      priority=body["priority"]).id for i in range(body["n"])]
    request.response.status = 201
    return {"jobIds": ids}


def with_bulk(config):
    config.add_route("bulk", "/bulk")
    config.add_view(bulk_view, route_name="bulk", renderer="json", request_method="POST")


def mail(**extra):
    return {"to": "ann@example.com", "subject": "Verify", "html": "<p>code</p>", **extra}


# -- the API, the setting, the row and the status ---------------------------------------------

@pytest.fixture
def app(db, pg_url, tmp_path):
    settings = {"mail.queue_url": f"sqlite:///{tmp_path}/huey.sqlite",
                "mail.default_sender": SENDER, "mail.default_priority": "low"}
    return TestApp(make_app(pg_url, settings, engine=db))


def test_priority_is_stored_and_shown_default_from_the_setting(app, db):
    high = app.post_json("/send", mail(priority="high"), status=201).json["jobId"]
    normal = app.post_json("/send", mail(priority="normal"), status=201).json["jobId"]
    default = app.post_json("/send", mail(), status=201).json["jobId"]
    assert [app.get(f"/jobs/{j}").json["priority"] for j in (high, normal, default)] == [
        "high", "normal", "low"]  # mail.default_priority = low
    with db.connect() as conn:
        stored = dict(conn.execute(select(outbox_table.c.id, outbox_table.c.priority)).all())
    assert stored == {high: 10, normal: 0, default: -10}


def test_a_bad_priority_is_a_named_error(app, db):
    reply = app.post_json("/send", mail(priority="urgent"), status=400).json
    assert "priority" in reply["error"] and "high, normal, low" in reply["error"]
    env = prepare(registry=app.app.registry)  # (the view turns only ValueError into a 400)
    try:
        with pytest.raises(TypeError, match="priority must be one of high, normal, low"):
            env["request"].mailer.send_queued(**mail(priority=10))
    finally:
        env["closer"]()
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox_table)).scalar() == 0


def test_a_bad_default_priority_is_a_configuration_error_naming_it():
    with pytest.raises(ConfigurationError, match="mail.default_priority") as info:
        parse_mail_settings({"mail.default_priority": "urgent"})
    assert "high, normal, low" in str(info.value)
    assert parse_mail_settings({}).default_priority == "normal"


class RecordingBroker:
    def __init__(self) -> None:
        self.pushed: list = []

    def push(self, job_id, eta=None, priority=0):
        self.pushed.append((job_id, priority))


def test_every_push_keeps_the_rows_priority_and_the_relay_pushes_high_first(app, db):
    low = app.post_json("/send", mail(priority="low"), status=201).json["jobId"]
    high = app.post_json("/send", mail(priority="high"), status=201).json["jobId"]
    settings = parse_mail_settings({})
    with db.begin() as conn:  # as if never pushed (the queue was down at commit)
        conn.execute(outbox_table.update().values(enqueued_at=None))
    broker = RecordingBroker()
    assert relay(db, broker, settings) == 2
    assert broker.pushed == [(high, PRIORITIES["high"]), (low, PRIORITIES["low"])]
    with db.begin() as conn:
        conn.execute(outbox_table.update().values(enqueued_at=None))
    broker.pushed.clear()
    assert push_one(db, broker, low) and broker.pushed == [(low, PRIORITIES["low"])]


# -- end to end: the consumer under a backlog ------------------------------------------------

@pytest.fixture
def system(smtp_server, db, pg_url, private_redis, tmp_path):
    consumers: list[ConsumerProcess] = []

    def build(queue: str):
        queue_url = (private_redis.url if queue == "redis"
                     else f"sqlite:///{tmp_path}/huey-{uuid.uuid4().hex[:6]}.sqlite")
        settings = {"sqlalchemy.url": pg_url, "mail.transport": "smtp",
                    "mail.host": "127.0.0.1", "mail.port": smtp_server.port,
                    "mail.default_sender": SENDER, "mail.queue_url": queue_url,
                    "mail.queue_name": f"prio-{uuid.uuid4().hex[:8]}", "mail.workers": "2",
                    "mail.relay_interval": "1", "mail.shutdown_timeout": "2"}
        ini = write_ini(str(tmp_path / f"{queue}.ini"), settings)
        consumer = ConsumerProcess(ini, str(tmp_path / f"{queue}-consumer.log"))
        consumers.append(consumer)
        return TestApp(make_app(pg_url, settings, engine=db, extra=with_bulk)), consumer

    yield build
    for consumer in consumers:
        consumer.stop()


def _not_completed(db, job_ids: list[str]) -> int:
    t = outbox_table
    with db.connect() as conn:
        return conn.execute(select(func.count()).select_from(t).where(
            t.c.id.in_(job_ids), t.c.state != "completed")).scalar()


@pytest.mark.parametrize(("queue", "backlog_size"), [("redis", BACKLOG), ("sqlite", 1000)])
def test_a_high_priority_mail_overtakes_a_backlog_of_low_ones(system, smtp_server, db, queue,
                                                              backlog_size):
    """5,000 low-priority mails queued in one request (1,000 on the SQLite queue: cheaper),
    the consumer running, then one high-priority mail: delivered within 5 s, while most of
    the backlog is still waiting; the consumer is stopped without draining it."""
    testapp, consumer = system(queue)
    backlog = testapp.post_json("/bulk", {"n": backlog_size, "priority": "low"},
                                status=201).json["jobIds"]
    assert len(backlog) == backlog_size
    consumer.start()
    wait_until(lambda: len(smtp_server.handler.attempts) > 0, timeout=30,
               message="the consumer delivering the backlog")
    queued_at = time.monotonic()
    job_id = testapp.post_json("/send", mail(priority="high"), status=201).json["jobId"]
    target = f"<{job_id}@exams.example>"

    def delivered():
        return next((a.at for a in smtp_server.handler.attempts if a.message_id == target), None)

    wait_until(lambda: delivered() is not None, timeout=120, message="the high-priority mail")
    latency = delivered() - queued_at
    still_queued = _not_completed(db, backlog)
    consumer.stop()  # without draining the backlog
    assert latency <= 5.0, f"high-priority mail delivered {latency:.1f}s after it was queued"
    assert still_queued >= backlog_size // 2, f"only {still_queued} low mails were left"
    assert testapp.get(f"/jobs/{job_id}").json["priority"] == "high"


def test_a_consumer_moves_the_list_queue_of_an_older_release(private_redis):
    """An older release pushed to a list (huey.RedisHuey); the priority queue is a sorted set
    under the same key: the consumer's queue moves the list's entries over, oldest first."""
    from huey import RedisHuey

    from pyramid_examcache.mail.queue import make_huey

    settings = parse_mail_settings({"mail.queue_url": private_redis.url,
                                    "mail.queue_name": "upgrade"})
    old = RedisHuey("upgrade", url=private_redis.url, results=False)
    task = old.task(name="examcache.mail.deliver")(lambda job_id: job_id)
    for job_id in ("first", "second", "third"):
        task(job_id)
    assert old.storage.conn.type(old.storage.queue_key) == b"list"
    web = make_huey(settings)  # a web process does not move anything
    assert web.storage.conn.type(web.storage.queue_key) == b"list"
    consumer = make_huey(settings, consumer=True)
    assert consumer.storage.conn.type(consumer.storage.queue_key) == b"zset"
    consumer.task(name="examcache.mail.deliver")(lambda job_id: job_id)
    assert [consumer.dequeue().args[0] for _ in range(3)] == ["first", "second", "third"]
    assert consumer.dequeue() is None
