"""Idempotent sends: ``send_queued(..., idempotency_key=...)`` makes at most one job per key
within ``mail.idempotency_window``, decided by the outbox's unique index (docs/design/mail.md)."""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.request
import uuid

import pytest
from sqlalchemy import create_engine, func, select
from webtest import TestApp

from pyramid_examcache.mail import Message
from pyramid_examcache.mail.outbox import (COMPLETED, insert_once, metadata, new_row,
                                           outbox_table, utcnow)
from pyramid_examcache.mail.status import purge_finished
from pyramid_examcache.testing import get_mail_capture

from ..cache.servers import thread_server
from .helpers import insert_job, load
from .support import ConsumerProcess, make_app, users_table, wait_until, write_ini

DAY = 86400.0


def send_twice_view(request):
    """A user row, then two sends with one key (and a third without): one transaction."""
    body = request.json_body
    request.dbsession.execute(users_table.insert().values(email=body["email"]))
    first = request.mailer.send_queued(body["email"], "First", "<p>1</p>",
                                       idempotency_key=body["key"])
    second = request.mailer.send(Message(subject="Second", recipients=[body["email"]],
                                         html="<p>2</p>"), idempotency_key=body["key"])
    return {"first": [first.id, first.duplicate], "second": [second.id, second.duplicate]}


def keyed_view(request):
    """send_queued with the body's fields; the job id and whether it was a duplicate."""
    try:
        job = request.mailer.send_queued(**request.json_body)
    except ValueError as exc:
        request.response.status = 400
        return {"error": str(exc)}
    request.response.status = 201
    return {"jobId": job.id, "duplicate": job.duplicate}


def views(config):
    config.add_route("send_twice", "/send-twice")
    config.add_view(send_twice_view, route_name="send_twice", renderer="json",
                    request_method="POST")
    config.add_route("keyed", "/keyed")
    config.add_view(keyed_view, route_name="keyed", renderer="json", request_method="POST")


@pytest.fixture
def app(db, pg_url):
    def extra(config):
        config.include("pyramid_examcache.testing")
        views(config)

    return make_app(pg_url, {"mail.default_sender": "no-reply@exams.example"}, engine=db,
                    extra=extra)


def count_rows(engine, **where) -> int:
    t = outbox_table
    query = select(func.count()).select_from(t).where(
        *(t.c[name] == value for name, value in where.items()))
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def mail(key, **extra):
    return {"to": "ann@example.com", "subject": "Verify", "html": "<p>x</p>",
            "idempotency_key": key, **extra}


def test_a_repeated_key_returns_the_first_job_and_queues_nothing(app, db):
    testapp = TestApp(app)
    key = f"verify:{uuid.uuid4().hex}"
    first = testapp.post_json("/keyed", mail(key), status=201).json
    second = testapp.post_json("/keyed", mail(key, subject="Other"), status=201).json
    assert first["duplicate"] is False and second == {"jobId": first["jobId"], "duplicate": True}
    assert count_rows(db) == 1 and load(db, first["jobId"]).idempotency_key == key
    capture = get_mail_capture(testapp)
    assert [(m.job_id, m.subject) for m in capture.outbox] == [(first["jobId"], "Verify")]
    # another key, and no key at all, are separate jobs
    third = testapp.post_json("/keyed", mail(key + "-b"), status=201).json
    fourth = testapp.post_json("/keyed", mail(None), status=201).json
    assert len({first["jobId"], third["jobId"], fourth["jobId"]}) == 3
    assert count_rows(db) == 3 and len(capture.outbox) == 3


def test_a_taken_key_leaves_the_callers_transaction_usable(app, db):
    """The conflict does not abort the request's transaction: the user row commits."""
    res = TestApp(app).post_json("/send-twice", {"email": "kim@example.com", "key": "k1"})
    first_id = res.json["first"][0]
    assert res.json == {"first": [first_id, False], "second": [first_id, True]}
    with db.connect() as conn:
        assert conn.execute(select(users_table.c.email)).scalars().all() == ["kim@example.com"]
    assert count_rows(db) == 1
    assert [m.subject for m in get_mail_capture(app).outbox] == ["First"]


def test_an_aborted_first_send_frees_the_key(app, db):
    testapp = TestApp(app)
    testapp.post_json("/send-twice", {"email": "kim@example.com", "key": "k2"})
    with pytest.raises(Exception):  # the same e-mail again: the user insert fails, all aborts
        testapp.post_json("/send-twice", {"email": "kim@example.com", "key": "k3"})
    assert count_rows(db, idempotency_key="k3") == 0
    job = testapp.post_json("/keyed", mail("k3"), status=201).json
    assert job["duplicate"] is False and count_rows(db, idempotency_key="k3") == 1


def test_without_a_transaction_the_keyed_row_commits_at_once(app, db):
    from pyramid.scripting import prepare

    env = prepare(registry=app.registry)
    try:
        first = env["request"].mailer.send_queued("ann@example.com", "S", "<p>b</p>",
                                                  idempotency_key="script-1")
        second = env["request"].mailer.send_queued("ann@example.com", "S", "<p>b</p>",
                                                   idempotency_key="script-1")
    finally:
        env["closer"]()
    assert (second.id, second.duplicate, first.duplicate) == (first.id, True, False)
    assert load(db, first.id).state == COMPLETED  # committed, pushed, delivered in process
    assert len(get_mail_capture(app).outbox) == 1


def test_a_key_older_than_the_window_is_released(db, pg_url):
    app = make_app(pg_url, {"mail.idempotency_window": "60"}, engine=db,
                   extra=lambda config: (config.include("pyramid_examcache.testing"),
                                         views(config)))
    old = insert_job(db, idempotency_key="weekly", created_at=utcnow() - dt.timedelta(seconds=90))
    recent = insert_job(db, idempotency_key="daily", created_at=utcnow() - dt.timedelta(seconds=30))
    testapp = TestApp(app)
    res = testapp.post_json("/keyed", mail("weekly"), status=201).json
    assert res["duplicate"] is False and res["jobId"] != old
    assert load(db, old).idempotency_key is None
    assert load(db, res["jobId"]).idempotency_key == "weekly"
    assert testapp.post_json("/keyed", mail("daily"), status=201).json == {
        "jobId": recent, "duplicate": True}


def test_the_purge_keeps_a_keyed_job_for_the_window_and_then_releases_it(db):
    now = utcnow()
    hours_ago = now - dt.timedelta(hours=2)
    finished = dict(state=COMPLETED, finished_at=hours_ago, created_at=hours_ago)
    keyed = insert_job(db, idempotency_key="held", **finished)
    plain = insert_job(db, **finished)
    expired = insert_job(db, idempotency_key="old", **{**finished,
                                                      "created_at": now - dt.timedelta(days=2)})
    with db.begin() as conn:
        assert purge_finished(conn, 3600, 604800, now, DAY) == 2
    assert load(db, plain) is None and load(db, expired) is None
    assert load(db, keyed).idempotency_key == "held"
    with db.begin() as conn:  # a day later the key is released and the row purged
        assert purge_finished(conn, 3600, 604800, now + dt.timedelta(days=1), DAY) == 1
    assert load(db, keyed) is None


def values_for(key: str | None) -> dict:
    job_id = uuid.uuid4().hex
    return new_row(job_id, f"<{job_id}@x.org>", "a@x.org", ["b@x.org"], "s", "h", None, {},
                   utcnow(), idempotency_key=key)


def test_insert_once_on_sqlite(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/outbox.sqlite")
    metadata.create_all(engine)
    first, second = values_for("k"), values_for("k")
    with engine.begin() as conn:
        assert insert_once(conn, first, DAY, utcnow(), dialect="sqlite") is None
    with engine.begin() as conn:
        holder = insert_once(conn, second, DAY, utcnow(), dialect="sqlite")
        assert holder.id == first["id"]
        conn.execute(outbox_table.insert().values(**values_for("other")))  # still usable
    assert count_rows(engine) == 2
    engine.dispose()


def test_insert_once_through_a_savepoint_keeps_the_transaction(db):
    """Databases without ON CONFLICT: the insert runs in a savepoint (forced on PostgreSQL)."""
    first, second = values_for("sp"), values_for("sp")
    with db.begin() as conn:
        conn.execute(users_table.insert().values(email="before@example.com"))
        assert insert_once(conn, first, DAY, utcnow(), dialect="generic") is None
        assert insert_once(conn, second, DAY, utcnow(), dialect="generic").id == first["id"]
        conn.execute(users_table.insert().values(email="after@example.com"))
    with db.connect() as conn:
        assert len(conn.execute(select(users_table.c.email)).all()) == 2
    assert count_rows(db) == 1


def test_the_database_itself_refuses_a_second_row_with_a_key(db):
    """The guarantee is the unique index: a plain INSERT of a taken key, bypassing
    insert_once, is refused by PostgreSQL; keyless rows are not constrained."""
    from sqlalchemy import exc, inspect

    [index] = [i for i in inspect(db).get_indexes(outbox_table.name)
               if i["column_names"] == ["idempotency_key"]]
    assert index["unique"] is True
    with db.begin() as conn:
        conn.execute(outbox_table.insert().values(**values_for("taken")))
    with pytest.raises(exc.IntegrityError, match="idempotency_key"):
        with db.begin() as conn:
            conn.execute(outbox_table.insert().values(**values_for("taken")))
    with db.begin() as conn:
        conn.execute(outbox_table.insert().values(**values_for(None)))
        conn.execute(outbox_table.insert().values(**values_for(None)))
    assert count_rows(db, idempotency_key="taken") == 1 and count_rows(db) == 3


@pytest.mark.parametrize("key, error", [("", "non-empty"), ("x" * 256, "longer than 255"),
                                        ("a\nb", "control character")])
def test_bad_keys_are_refused(app, db, key, error):
    if key == "":
        with pytest.raises(TypeError, match=error):
            TestApp(app).post_json("/keyed", mail(key))
    else:
        res = TestApp(app).post_json("/keyed", mail(key), status=400)
        assert error in res.json["error"]
    assert count_rows(db) == 0


# -- twenty concurrent requests, the real consumer and SMTP ------------------------------------

N = 20


@pytest.mark.e2e
def test_twenty_concurrent_requests_with_one_key_send_one_mail(db, pg_url, smtp_server,
                                                               private_redis, tmp_path):
    settings = {"mail.transport": "smtp", "mail.host": "127.0.0.1",
                "mail.port": smtp_server.port, "mail.default_sender": "no-reply@exams.example",
                "mail.queue_url": private_redis.url,
                "mail.queue_name": f"mailtest-{uuid.uuid4().hex[:8]}",
                "mail.relay_interval": "1", "mail.workers": "2"}
    barrier = threading.Barrier(N, timeout=30)

    def held_view(request):
        """All requests send at once; the winner's transaction stays open a moment so
        that the others' inserts meet an uncommitted row of the same key."""
        barrier.wait()
        job = request.mailer.send_queued("ann@example.com", "Verify", "<p>once</p>",
                                         idempotency_key=request.json_body["key"])
        if not job.duplicate:
            time.sleep(0.3)
        return {"jobId": job.id, "duplicate": job.duplicate}

    def extra(config):
        config.add_route("held", "/held")
        config.add_view(held_view, route_name="held", renderer="json", request_method="POST")

    engine = create_engine(pg_url, pool_size=N + 5)
    app = make_app(pg_url, {"sqlalchemy.url": pg_url, **settings}, engine=engine, extra=extra)
    consumer = ConsumerProcess(write_ini(str(tmp_path / "mail.ini"),
                                         {"sqlalchemy.url": pg_url, **settings}),
                               str(tmp_path / "consumer.log"))
    consumer.start()
    results: list = []
    try:
        with thread_server(app, threads=N) as base:
            def post() -> None:
                req = urllib.request.Request(f"{base}/held", data=json.dumps(
                    {"key": "signup:ann"}).encode(), headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as resp:
                    results.append(json.loads(resp.read()))

            threads = [threading.Thread(target=post) for _ in range(N)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
        assert len(results) == N
        [job_id] = {r["jobId"] for r in results}
        assert sorted(r["duplicate"] for r in results) == [False] + [True] * (N - 1)
        assert count_rows(db) == 1
        wait_until(lambda: load(db, job_id).state == COMPLETED, timeout=30, message="delivered")
        consumer.wait_for_rounds(3)  # what a second job or push would have sent, has been sent
        assert smtp_server.accepted_ids() == [f"<{job_id}@exams.example>"]
    finally:
        consumer.stop()
        engine.dispose()
