"""Messages, transient/permanent classification, and the transports (SMTP against aiosmtpd)."""
from __future__ import annotations

import email
import email.policy
import smtplib
import socket
import ssl

import pytest

from pyramid_examcache.mail.message import (InvalidAddress, build_message, check_address,
                                            header_name, html_to_text, make_message_id,
                                            recipients_list)
from pyramid_examcache.mail.transports import (FileTransport, MemoryTransport, PermanentMailError,
                                               SMTPTransport, TransientMailError, classify)

from ..conftest import free_port


def message(to="ann@example.com", message_id="<job1@exams.example>"):
    return build_message(sender="Exams <no-reply@exams.example>", recipients=[to],
                         subject="Hello", html="<p>Hi <a href='https://x.example/v?t=1'>verify</a></p>",
                         text=None, headers={"reply_to": "help@exams.example"}, message_id=message_id)


# -- message ----------------------------------------------------------------------------------

def test_message_has_stable_id_alternatives_and_headers():
    msg = message()
    assert msg["Message-ID"] == "<job1@exams.example>"
    assert msg["Reply-To"] == "help@exams.example"
    assert msg.get_body(("html",)).get_content().startswith("<p>Hi")
    assert "verify" in msg.get_body(("plain",)).get_content()
    assert "https://x.example/v?t=1" in msg.get_body(("plain",)).get_content()


def test_message_id_is_derived_from_the_job_id():
    assert make_message_id("abc", "Exams <no-reply@exams.example>") == "<abc@exams.example>"
    assert make_message_id("abc", "nobody") == "<abc@localhost>"


@pytest.mark.parametrize("bad", ["", "ann", "ann@", "@x.org", "a b@x.org", "a@x.org\r\nBcc: e@x.org"])
def test_invalid_addresses(bad):
    with pytest.raises(InvalidAddress):
        check_address(bad)


def test_addresses_and_header_names():
    assert check_address("Ann <ann@example.com>") == "ann@example.com"
    assert recipients_list("a@x.org, b@x.org") == ["a@x.org", "b@x.org"]
    assert recipients_list(("a@x.org",)) == ["a@x.org"]
    with pytest.raises(ValueError):
        recipients_list([])
    assert header_name("reply_to") == "Reply-To" and header_name("X_Mailer") == "X-Mailer"
    assert html_to_text("<style>p{}</style><h1>T</h1><p>a  b</p>") == "T\n\na b"


# -- classification ---------------------------------------------------------------------------

@pytest.mark.parametrize("exc, transient, reason", [
    (smtplib.SMTPDataError(451, b"4.3.0 try later"), True, "451 4.3.0 try later"),
    (smtplib.SMTPDataError(550, b"5.1.1 unknown"), False, "550 5.1.1 unknown"),
    (smtplib.SMTPSenderRefused(421, b"busy", "a@x.org"), True, "421 busy"),
    (smtplib.SMTPSenderRefused(553, b"bad sender", "a@x.org"), False, "553 bad sender"),
    (smtplib.SMTPAuthenticationError(535, b"bad credentials"), False, "535 bad credentials"),
    (smtplib.SMTPConnectError(421, b"too many connections"), True, "421"),
    (smtplib.SMTPRecipientsRefused({"a@x.org": (450, b"mailbox busy")}), True, "450"),
    (smtplib.SMTPRecipientsRefused({"a@x.org": (450, b"busy"), "b@x.org": (550, b"no")}), False, "550"),
    (smtplib.SMTPServerDisconnected("gone"), True, "connection closed"),
    (ConnectionRefusedError(111, "Connection refused"), True, "ConnectionRefusedError"),
    (ConnectionResetError(104, "reset"), True, "reset"),
    (socket.timeout("timed out"), True, "timed out"),
    (TimeoutError("timed out"), True, "timed out"),
    (ssl.SSLCertVerificationError("bad cert"), False, "certificate"),
    (smtplib.SMTPNotSupportedError("STARTTLS"), False, "does not support"),
    (InvalidAddress("invalid address 'x'"), False, "invalid address"),
    (ValueError("bug"), False, "ValueError"),
])
def test_classify(exc, transient, reason):
    error = classify(exc)
    assert error.transient is transient
    assert isinstance(error, TransientMailError if transient else PermanentMailError)
    assert reason in str(error)


# -- transports -------------------------------------------------------------------------------

def smtp(server) -> SMTPTransport:
    return SMTPTransport("127.0.0.1", server.port, timeout=5)


def test_smtp_sends_and_reuses_the_connection(smtp_server):
    transport = smtp(smtp_server)
    try:
        transport.send(message(message_id="<1@x>"), "no-reply@exams.example", ["ann@example.com"])
        transport.send(message(message_id="<2@x>"), "no-reply@exams.example", ["ann@example.com"])
    finally:
        transport.close()
    attempts = smtp_server.handler.attempts
    assert [a.message_id for a in attempts] == ["<1@x>", "<2@x>"]
    assert attempts[0].peer == attempts[1].peer  # one connection for both
    received = smtp_server.handler.accepted[0]
    assert received["From"] == "Exams <no-reply@exams.example>"


def test_smtp_4xx_is_transient_5xx_permanent_and_the_connection_is_dropped(smtp_server):
    smtp_server.handler.replies = ["451 4.3.0 greylisted", "550 5.1.1 no such user"]
    transport = smtp(smtp_server)
    with pytest.raises(TransientMailError, match="451 4.3.0 greylisted"):
        transport.send(message(), "no-reply@exams.example", ["ann@example.com"])
    with pytest.raises(PermanentMailError, match="550 5.1.1 no such user"):
        transport.send(message(), "no-reply@exams.example", ["ann@example.com"])
    transport.send(message(), "no-reply@exams.example", ["ann@example.com"])
    transport.close()
    peers = [a.peer for a in smtp_server.handler.attempts]
    assert len(set(peers)) == 3


def test_smtp_connection_refused_is_transient():
    transport = SMTPTransport("127.0.0.1", free_port(), timeout=2)
    with pytest.raises(TransientMailError, match="Refused"):
        transport.send(message(), "no-reply@exams.example", ["ann@example.com"])


def test_smtp_starttls_unsupported_is_permanent(smtp_server):
    transport = SMTPTransport("127.0.0.1", smtp_server.port, tls=True, timeout=5)
    with pytest.raises(PermanentMailError, match="STARTTLS"):
        transport.send(message(), "no-reply@exams.example", ["ann@example.com"])


def test_file_transport_writes_eml(tmp_path):
    FileTransport(str(tmp_path / "mail")).send(message(), "no-reply@exams.example", ["ann@example.com"])
    [path] = (tmp_path / "mail").glob("*.eml")
    assert "job1@exams.example" in path.name
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == "<job1@exams.example>"


def test_memory_transport_captures():
    capture = MemoryTransport()
    capture.send(message(), "no-reply@exams.example", ["ann@example.com"])
    mail = capture.last
    assert mail.to == ["ann@example.com"] and mail.subject == "Hello" and mail.job_id == "job1"
    capture.clear()
    assert capture.outbox == [] and capture.last is None
