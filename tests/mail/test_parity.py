"""pyramid_mailer parity (issue 9, item 4): an app written the pyramid_mailer way -- its
``Message``, ``Attachment``, ``request.mailer.send`` -- runs unchanged apart from the include,
through the outbox, a real ``examcache-consumer`` and a real SMTP server (aiosmtpd)."""
from __future__ import annotations

import email
import email.policy
import uuid

import pytest
from pyramid.config import Configurator
from pyramid_mailer.message import Attachment, Message
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker
from webtest import TestApp

from pyramid_examcache.mail import Attachment as OurAttachment
from pyramid_examcache.mail import Message as OurMessage
from pyramid_examcache.mail.outbox import outbox_table
from pyramid_examcache.testing import get_mail_capture

from .support import ConsumerProcess, get_tm_session, wait_until, write_ini

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"  # binary, every byte value
CSV = "name,score\r\nAnn,17\r\nBo,12\r\n"


# -- the app, written for pyramid_mailer --------------------------------------------------------

def report_view(request):
    """What a pyramid_mailer user writes (pyramid_mailer's docs, "Sending mail")."""
    message = Message(subject="Your results", sender="Exams <exams@example.com>",
                      recipients=[request.json_body["to"]], cc=["teacher@example.com"],
                      bcc=["archive@example.com"],
                      body="Hello,\n\nyour results are attached.\n",
                      html="<p>Hello,</p><p>your results are <b>attached</b>.</p>",
                      extra_headers={"X-Exam-Id": "42", "Reply-To": "help@example.com"})
    message.attach(Attachment("results.pdf", "application/pdf", PDF))
    message.attach(Attachment("scores.csv", "text/csv", CSV))
    request.mailer.send(message)
    if request.json_body.get("fail"):
        raise RuntimeError("the request fails after sending: nothing may be delivered")
    return {"ok": True}


def make_report_app(include: str, settings: dict, engine=None, extra=None):
    config = Configurator(settings=settings)
    config.include("pyramid_tm")
    if engine is not None:  # the cookiecutter's request.dbsession
        factory = sessionmaker(bind=engine)
        config.add_request_method(
            lambda r: get_tm_session(factory, r.tm, request=r), "dbsession", reify=True)
    config.include(include)
    if extra is not None:
        extra(config)
    config.add_route("report", "/report")
    config.add_view(report_view, route_name="report", renderer="json", request_method="POST")
    return config.make_wsgi_app()


def test_the_app_is_a_pyramid_mailer_app():
    """The same view under pyramid_mailer itself (its DummyMailer): the app is genuine."""
    from pyramid_mailer import get_mailer

    app = make_report_app("pyramid_mailer.testing", {})
    TestApp(app).post_json("/report", {"to": "ann@example.com"}, status=200)
    sent = get_mailer(app.registry).outbox
    assert [m.subject for m in sent] == ["Your results"]
    assert [a.filename for a in sent[0].attachments] == ["results.pdf", "scores.csv"]


@pytest.mark.e2e
def test_runs_unchanged_with_our_include_through_consumer_and_smtp(
        db, pg_url, private_redis, smtp_server, tmp_path):
    settings = {"sqlalchemy.url": pg_url, "mail.transport": "smtp", "mail.host": "127.0.0.1",
                "mail.port": str(smtp_server.port), "mail.queue_url": private_redis.url,
                "mail.queue_name": f"parity-{uuid.uuid4().hex[:8]}", "mail.relay_interval": "1",
                "mail.default_sender": "no-reply@example.com"}
    app = TestApp(make_report_app("pyramid_examcache.mail", settings, engine=db))
    consumer = ConsumerProcess(write_ini(str(tmp_path / "m.ini"), settings),
                               str(tmp_path / "consumer.log"))
    consumer.start()
    try:
        with pytest.raises(RuntimeError):  # pyramid_mailer's send() is transactional; so is ours
            app.post_json("/report", {"to": "bo@example.com", "fail": True})
        app.post_json("/report", {"to": "ann@example.com"}, status=200)
        wait_until(lambda: smtp_server.handler.received, timeout=30, message="delivery")
        consumer.wait_for_rounds(2)  # the aborted mail would have been relayed by now
    finally:
        consumer.stop()
    assert len(smtp_server.handler.received) == 1
    envelope, raw = smtp_server.handler.received[0]
    assert sorted(envelope) == ["ann@example.com", "archive@example.com", "teacher@example.com"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Your results" and msg["X-Exam-Id"] == "42"
    assert msg["From"] == "Exams <exams@example.com>"
    assert msg["Reply-To"] == "help@example.com" and msg["Cc"] == "teacher@example.com"
    assert b"archive@example.com" not in raw.split(b"\r\n\r\n", 1)[0]  # bcc: envelope only
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text == "Hello,\n\nyour results are attached.\n"
    assert "<b>attached</b>" in msg.get_body(("html",)).get_content()
    files = {part.get_filename(): (part.get_content_type(), part.get_content())
             for part in msg.iter_attachments()}
    assert files["results.pdf"] == ("application/pdf", PDF)  # byte for byte
    assert files["scores.csv"][0] == "text/csv"
    assert files["scores.csv"][1].replace("\r\n", "\n") == CSV.replace("\r\n", "\n")


# -- limits, bad input, the request attribute -----------------------------------------------

def make_testing_app(db, pg_url, **settings):
    return make_report_app("pyramid_examcache.mail", {"sqlalchemy.url": pg_url, **settings},
                           engine=db, extra=lambda c: c.include("pyramid_examcache.testing"))


def outbox_rows(db) -> int:
    with db.connect() as conn:
        return conn.scalar(select(func.count()).select_from(outbox_table))


def test_a_mail_over_max_message_bytes_is_refused_when_queued(db, pg_url):
    app = make_testing_app(db, pg_url, **{"mail.max_message_bytes": "5000"})
    before = outbox_rows(db)
    with pytest.raises(ValueError, match=r"mail\.max_message_bytes \(5000\)"):
        TestApp(app).post_json("/report", {"to": "ann@example.com"})  # the PDF is 10 kB
    assert outbox_rows(db) == before
    assert get_mail_capture(app).outbox == []


def test_our_message_and_attachment_classes_and_send_immediately(db, pg_url):
    app = make_testing_app(db, pg_url)
    from pyramid.scripting import prepare

    env = prepare(registry=app.registry)
    try:
        mailer = env["request"].mailer
        message = OurMessage(subject="Now", recipients=["cy@example.com"], body="text only")
        message.attach(OurAttachment("a.bin", data=b"\x00\x01"))
        message_id = mailer.send_immediately(message)
        with pytest.raises(TypeError, match="not both"):
            mailer.send_queued(message, subject="x")
        with pytest.raises(ValueError, match="needs a body"):
            mailer.send_immediately(OurMessage(subject="x", recipients=["cy@example.com"]),
                                    fail_silently=True)  # bad input is never silenced
        with pytest.raises(ValueError, match="disposition"):
            mailer.send_now(OurMessage(subject="x", recipients=["cy@example.com"], body="b",
                                       attachments=[OurAttachment("a", data=b"", disposition="x")]))
    finally:
        env["closer"]()
    sent = get_mail_capture(app).last
    assert sent.message_id == message_id and sent.text.strip() == "text only" and sent.html == ""


def test_request_attr_lets_pyramid_mailer_live_beside(db, pg_url):
    """mail.request_attr = outbox: request.mailer stays pyramid_mailer's."""
    from pyramid_mailer import get_mailer

    def view(request):
        request.mailer.send(Message(subject="theirs", sender="a@example.com",
                                    recipients=["x@example.com"], body="b"))
        request.outbox.send(Message(subject="ours", recipients=["y@example.com"], body="b"))
        return {}

    def extra(config):
        config.include("pyramid_examcache.testing")
        config.include("pyramid_mailer.testing")
        config.add_route("both", "/both")
        config.add_view(view, route_name="both", renderer="json")

    app = make_report_app("pyramid_examcache.mail",
                          {"sqlalchemy.url": pg_url, "mail.request_attr": "outbox"},
                          engine=db, extra=extra)
    TestApp(app).get("/both", status=200)
    assert [m.subject for m in get_mailer(app.registry).outbox] == ["theirs"]
    assert [m.subject for m in get_mail_capture(app).outbox] == ["ours"]


@pytest.mark.parametrize("value", ["", "1x", "_private", "a.b"])
def test_bad_request_attr_is_a_configuration_error(value):
    from pyramid.exceptions import ConfigurationError

    from pyramid_examcache.settings import parse_mail_settings

    with pytest.raises(ConfigurationError, match="mail.request_attr"):
        parse_mail_settings({"mail.request_attr": value})
