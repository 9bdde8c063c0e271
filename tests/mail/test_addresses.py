"""Addresses are validated when queued (send_queued), never first in the consumer; to/cc/bcc,
reply_to, duplicates; SMTP AUTH without TLS refused at start-up. Table-driven."""
from __future__ import annotations

import pytest
from pyramid.exceptions import ConfigurationError
from sqlalchemy import func, select
from webtest import TestApp

from pyramid_examcache.mail.message import validate_address
from pyramid_examcache.mail.outbox import outbox_table
from pyramid_examcache.settings import parse_mail_settings
from pyramid_examcache.testing import get_mail_capture

from .support import make_app

REFUSED = [
    # (value, what the error says)
    ("=?utf-8?q?victim=40example.org?=@example.com", "encoded word"),
    ("Victim =?utf-8?q?victim=40example.org?= <a@example.com>", "encoded word"),
    ("a\x00b@example.com", "control character"),
    ("a\x01b@example.com", "control character"),
    ("a\rb@example.com", "control character"),
    ("ann@example.com\r\nBcc: eve@example.org", "control character"),
    ("a\x7f@example.com", "control character"),
    ("x@\u202eexample.com", "control character"),  # right-to-left override
    ("josé@example.com", "mail.smtputf8"),
    ("用户@例子.广告", "mail.smtputf8"),
    ("not-an-address", "invalid address"),
    ("", "at least one recipient"),
    ("a@b@example.com", "invalid address"),
    ("a b@example.com", "invalid address"),
    ('"a b"@example.com', "invalid address"),
    ("a@-example.com", "invalid address"),
    ("a@exa_mple.com", "invalid address"),
    (".a@example.com", "invalid address"),
    ("a..b@example.com", "invalid address"),
    ("Ann <a@example.com", "invalid address"),
    ("a@[127.0.0.1]", "invalid address"),
]

ACCEPTED = [
    # (value, header form, bare address)
    ("ann@example.com", "ann@example.com", "ann@example.com"),
    ("Ann <ann@Example.COM>", "Ann <ann@example.com>", "ann@example.com"),
    ('"Doe, Jane" <jane@example.com>', '"Doe, Jane" <jane@example.com>', "jane@example.com"),
    ("no-reply@localhost", "no-reply@localhost", "no-reply@localhost"),
    ("a+tag@exams.example", "a+tag@exams.example", "a+tag@exams.example"),
    ("a@bücher.de", "a@xn--bcher-kva.de", "a@xn--bcher-kva.de"),  # IDNA domain: ASCII form
]


@pytest.fixture
def app(db, pg_url):
    return make_app(pg_url, {"mail.default_sender": "no-reply@exams.example"}, engine=db,
                    extra=lambda config: config.include("pyramid_examcache.testing"))


def count_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(outbox_table)).scalar_one()


BAD_CASES = [(field, value, error) for value, error in REFUSED
             for field in ("to", "cc", "bcc", "reply_to")
             if value or field == "to"]  # an empty cc/bcc/reply_to is just "none"


@pytest.mark.parametrize("field,value,error", BAD_CASES,
                         ids=[f"{f}-{repr(v)[:40]}" for f, v, _e in BAD_CASES])
def test_bad_address_raises_valueerror_at_send_queued(app, field, value, error):
    body = {"to": "ok@example.com", "subject": "S", "html": "<p>x</p>", field: value}
    res = TestApp(app).post_json("/send", body, status=400)
    assert error in res.json["error"]
    if value:
        assert f"in {field}" in res.json["error"]  # the field is named
    assert count_rows(app.engine) == 0
    assert get_mail_capture(app).outbox == []


@pytest.mark.parametrize("value,header,bare", ACCEPTED, ids=[v for v, _h, _b in ACCEPTED])
def test_good_address_is_normalised(value, header, bare):
    assert validate_address(value, "to") == (header, bare)


def test_bad_sender_is_refused_at_send_queued(app):
    body = {"to": "ok@example.com", "subject": "S", "html": "x",
            "sender": "=?utf-8?q?boss=40example.org?= <a@example.com>"}
    res = TestApp(app).post_json("/send", body, status=400)
    assert "in sender" in res.json["error"]


def test_internationalised_addresses_only_with_smtputf8(db, pg_url):
    app = make_app(pg_url, {"mail.default_sender": "no-reply@exams.example",
                            "mail.smtputf8": "true"}, engine=db,
                   extra=lambda config: config.include("pyramid_examcache.testing"))
    TestApp(app).post_json("/send", {"to": "josé@example.com", "subject": "S", "html": "x"},
                           status=201)
    assert get_mail_capture(app).last.to == ["josé@example.com"]


def test_to_cc_bcc_reply_to_headers_and_envelope(app):
    body = {"to": ["Ann <ann@example.com>", "bob@example.com"], "cc": "cy@example.com",
            "bcc": ["hidden@example.org"], "reply_to": "Help <help@example.com>",
            "subject": "S", "html": "<p>x</p>"}
    TestApp(app).post_json("/send", body, status=201)
    mail = get_mail_capture(app).last
    assert mail.to == ["ann@example.com", "bob@example.com", "cy@example.com",
                       "hidden@example.org"]  # the envelope
    assert mail.headers["To"] == "Ann <ann@example.com>, bob@example.com"
    assert mail.headers["Cc"] == "cy@example.com"
    assert mail.headers["Reply-To"] == "Help <help@example.com>"
    assert "Bcc" not in mail.headers and b"hidden" not in mail.message.as_bytes()


def test_duplicate_recipients_are_sent_once(app):
    """Before: to= given twice failed only in the consumer."""
    body = {"to": ["ann@example.com", "ANN@example.com", "ann@EXAMPLE.com"],
            "cc": ["ann@example.com", "bob@example.com"], "bcc": "bob@example.com",
            "subject": "S", "html": "x"}
    TestApp(app).post_json("/send", body, status=201)
    mail = get_mail_capture(app).last
    assert mail.to == ["ann@example.com", "bob@example.com"]
    assert mail.headers["To"] == "ann@example.com" and mail.headers["Cc"] == "bob@example.com"


@pytest.mark.parametrize("header", ["Bcc", "To", "CC", "from", "message_id", "Sender"])
def test_address_headers_cannot_come_through_headers(app, header):
    body = {"to": "ok@example.com", "subject": "S", "html": "x", header: "eve@example.org"}
    res = TestApp(app).post_json("/send", body, status=400)
    assert "cannot be set through **headers" in res.json["error"]
    assert count_rows(app.engine) == 0


@pytest.mark.parametrize("settings,ok", [
    ({"mail.username": "u", "mail.password": "p"}, False),
    ({"mail.username": "u", "mail.tls": "true"}, True),
    ({"mail.username": "u", "mail.ssl": "true"}, True),
    ({"mail.username": "u", "mail.allow_plaintext_auth": "true"}, True),
    ({"mail.username": "u", "mail.transport": "file"}, True),  # no SMTP, no AUTH
    ({}, True),
])
def test_smtp_auth_without_tls_is_refused_at_startup(settings, ok):
    raw = {"mail.transport": "smtp", **settings}
    if ok:
        parse_mail_settings(raw)
        return
    with pytest.raises(ConfigurationError, match="mail.username") as info:
        parse_mail_settings(raw)
    assert "mail.tls" in str(info.value) and "mail.allow_plaintext_auth" in str(info.value)


@pytest.mark.parametrize("settings,name", [
    ({"mail.max_retry_delay": "0"}, "mail.max_retry_delay"),
    ({"mail.max_retry_delay": "1", "mail.retry_delay": "2"}, "mail.max_retry_delay"),
    ({"mail.max_age": "-1"}, "mail.max_age"),
    ({"mail.max_age": "soon"}, "mail.max_age"),
    ({"mail.smtputf8": "maybe"}, "mail.smtputf8"),
    ({"mail.allow_plaintext_auth": "2"}, "mail.allow_plaintext_auth"),
    ({"mail.default_sender": "=?utf-8?q?a?= <a@example.com>"}, "mail.default_sender"),
])
def test_new_settings_are_validated(settings, name):
    with pytest.raises(ConfigurationError, match=name):
        parse_mail_settings(settings)


def test_new_settings_defaults():
    s = parse_mail_settings({})
    assert (s.max_retry_delay, s.max_age, s.smtputf8, s.allow_plaintext_auth) == (
        600, 86400, False, False)


@pytest.mark.parametrize("server_has_smtputf8", [True, False])
def test_internationalised_address_is_sent_with_smtputf8(server_has_smtputf8):
    """With mail.smtputf8 the mail goes out with SMTPUTF8; a server without the extension
    is a permanent failure (no retry can help)."""
    from aiosmtpd.controller import Controller

    from pyramid_examcache.mail.message import build_message, envelope_recipients, make_recipients
    from pyramid_examcache.mail.transports import PermanentMailError, SMTPTransport

    from ..conftest import free_port
    from .support import ScriptedHandler

    handler, port = ScriptedHandler(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port,
                            enable_SMTPUTF8=server_has_smtputf8)
    controller.start()
    try:
        recipients = make_recipients("José <josé@example.com>", smtputf8=True)
        message = build_message(sender="no-reply@exams.example", recipients=recipients,
                                subject="Olá", html="<p>x</p>", text=None, headers={},
                                message_id="<m1@exams.example>")
        transport = SMTPTransport("127.0.0.1", port)
        if server_has_smtputf8:
            assert transport.send(message, "no-reply@exams.example",
                                  envelope_recipients(recipients)) == {}
            [(rcpts, raw)] = handler.received
            assert rcpts == ["josé@example.com"] and "josé@example.com".encode() in raw
        else:
            with pytest.raises(PermanentMailError):
                transport.send(message, "no-reply@exams.example", envelope_recipients(recipients))
            assert handler.received == []
        transport.close()
    finally:
        controller.stop()
