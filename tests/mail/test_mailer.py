"""request.mailer in a real (committing) Pyramid app, with the in-process testing setup."""
from __future__ import annotations

import pytest
from pyramid.exceptions import ConfigurationError
from sqlalchemy import func, select
from webtest import TestApp

from pyramid_examcache.mail.outbox import outbox_table
from pyramid_examcache.testing import get_mail_capture, mail_testing_settings

from .support import make_app, users_table


def TESTING(config):
    config.include("pyramid_examcache.testing")


@pytest.fixture
def app(db, pg_url):
    return make_app(pg_url, {"mail.default_sender": "Exams <no-reply@exams.example>"},
                    engine=db, extra=lambda config: config.include("pyramid_examcache.testing"))


def count_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(outbox_table)).scalar_one()


def test_committed_mail_is_sent_after_commit_and_captured(app):
    testapp = TestApp(app)
    res = testapp.post_json("/register", {"email": "ann@example.com"}, status=201)
    job_id = res.json["jobId"]
    assert res.json["queued"] is True and job_id
    capture = get_mail_capture(testapp)
    [mail] = capture.outbox
    assert mail.to == ["ann@example.com"]
    assert mail.subject == "Welcome"
    assert "Hello ann@example.com" in mail.html and "Hello ann@example.com" in mail.text
    assert mail.message_id == f"<{job_id}@exams.example>" and mail.job_id == job_id
    assert mail.headers["Reply-To"] == "help@example.com"
    assert mail.sender == "Exams <no-reply@exams.example>"
    status = testapp.get(f"/jobs/{job_id}").json
    assert status == {"id": job_id, "state": "completed", "progress": 100, "attempts": 1,
                      "failedReason": None, "nextAttemptAt": None, "failedRecipients": None,
                      "priority": "normal"}


def test_aborted_request_writes_and_sends_nothing(app):
    testapp = TestApp(app)
    with pytest.raises(RuntimeError, match="boom"):
        testapp.post_json("/register", {"email": "bob@example.com", "fail": True})
    assert get_mail_capture(app).outbox == []
    assert count_rows(app.engine) == 0


def test_unknown_job_is_none(app):
    testapp = TestApp(app)
    testapp.get("/jobs/nope", status=404)
    testapp.get(f"/jobs/{'x' * 100}", status=404)


def test_testing_settings_alone_are_refused_with_the_include_to_add(db, pg_url):
    """memory:// without the testing include would queue mail that nothing delivers."""
    with pytest.raises(ConfigurationError, match=r"pyramid_examcache\.testing"):
        make_app(pg_url, mail_testing_settings(), engine=db)


@pytest.fixture
def script_request(app):
    """A request outside pyramid_tm (a script), with its own plain Session."""
    from pyramid.scripting import prepare
    from sqlalchemy.orm import Session

    env = prepare(registry=app.registry)
    request = env["request"]
    request.dbsession = Session(bind=app.engine)
    yield request
    request.dbsession.close()
    env["closer"]()


def test_without_a_transaction_the_row_is_committed_before_the_id_is_returned(app, script_request):
    """Outside a transaction of request.tm (here: no request.tm at all) send_queued commits
    its row in a transaction of its own and pushes it before returning (issue 18: never a
    job id for a row that will not exist); the session is left alone."""
    job = script_request.mailer.send_queued(["a@example.com", "b@example.com"], "Hi",
                                            "<b>x</b>", text="x")
    assert count_rows(app.engine) == 1  # committed: seen from another connection
    assert not script_request.dbsession.in_transaction()
    assert script_request.mailer.job_status(job.id)["state"] == "completed"
    [mail] = get_mail_capture(script_request).outbox
    assert mail.to == ["a@example.com", "b@example.com"] and mail.text.strip() == "x"


def test_without_a_transaction_a_session_rollback_does_not_take_the_mail_back(app, script_request):
    """Documented: a plain session's rollback is not a transaction the mailer can join."""
    script_request.dbsession.execute(users_table.insert().values(email="r@example.com"))
    script_request.mailer.send_queued("r@example.com", "Hi", "<b>x</b>")
    script_request.dbsession.rollback()
    assert [m.to for m in get_mail_capture(app).outbox] == [["r@example.com"]]
    assert count_rows(app.engine) == 1


def test_missing_session_attribute_is_explained(db, pg_url):
    app = make_app(pg_url, {"mail.session_attr": "nosuch"}, engine=db, extra=TESTING)
    with pytest.raises(RuntimeError, match="mail.session_attr"):
        TestApp(app).post_json("/register", {"email": "d@example.com"})


def test_send_now_sends_synchronously(app):
    from pyramid.scripting import prepare

    env = prepare(registry=app.registry)
    try:
        message_id = env["request"].mailer.send_now("e@example.com", "Now", "<p>now</p>")
    finally:
        env["closer"]()
    assert get_mail_capture(app).last.message_id == message_id
    assert count_rows(app.engine) == 0


def test_each_application_has_its_own_queue(app, db, pg_url):
    """Nothing is shared between applications: each one's mail goes through its own queue."""
    other = make_app(pg_url, {}, engine=db, extra=TESTING)
    TestApp(app).post_json("/register", {"email": "one@example.com"}, status=201)
    TestApp(other).post_json("/register", {"email": "two@example.com"}, status=201)
    assert [m.to for m in get_mail_capture(app).outbox] == [["one@example.com"]]
    assert [m.to for m in get_mail_capture(other).outbox] == [["two@example.com"]]


def test_works_under_the_package_include(db, pg_url):
    """config.include('pyramid_examcache') (cache + mail), as users do."""
    app = make_app(pg_url, {"examcache.redis_url": "memory://"},
                   engine=db, include="pyramid_examcache", extra=TESTING)
    testapp = TestApp(app)
    job_id = testapp.post_json("/register", {"email": "fay@example.com"}, status=201).json["jobId"]
    assert get_mail_capture(testapp).last.job_id == job_id
