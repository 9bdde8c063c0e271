"""SMTP connection reuse: one connection per worker kept across mails, NOOP after idling,
``mail.smtp_max_messages_per_connection``, and a dropped reused connection replaced without
losing or duplicating the mail in hand -- the transport against aiosmtpd, then the
``examcache-consumer`` process (PostgreSQL outbox, private Redis)."""
from __future__ import annotations

import asyncio
import math
import threading
import uuid
from dataclasses import dataclass

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select
from webtest import TestApp

from pyramid_examcache.mail.outbox import outbox_table
from pyramid_examcache.mail.transports import SMTPTransport, TransientMailError
from pyramid_examcache.settings import parse_mail_settings

from ..conftest import free_port
from .support import ConsumerProcess, ScriptedHandler, SMTPServer, make_app, wait_until, write_ini
from .test_transports import message

SENDER = "no-reply@exams.example"


@dataclass
class CountingHandler(ScriptedHandler):
    """Counts connections (EHLO), NOOPs and QUITs; can close a connection after
    ``close_after`` messages on it, or drop it after storing a message, before the reply."""

    close_after: int = 0
    drop_before_reply: bool = False
    ehlos: int = 0
    noops: int = 0
    quits: int = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.ehlos += 1
        return responses

    async def handle_NOOP(self, server, session, envelope, arg):
        self.noops += 1
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        session.messages = getattr(session, "messages", 0) + 1
        if self.drop_before_reply:
            server.transport.close()
        elif self.close_after and session.messages >= self.close_after:
            asyncio.get_running_loop().call_soon(server.transport.close)  # after the reply
        return reply


@pytest.fixture
def server():
    smtp = SMTPServer(free_port())
    smtp.handler = CountingHandler()
    smtp.controller = Controller(smtp.handler, hostname="127.0.0.1", port=smtp.port)
    smtp.start()
    yield smtp
    smtp.stop()


def send(transport, n: int) -> None:
    transport.send(message(message_id=f"<{n}@x>"), SENDER, ["ann@example.com"])


def ids(server) -> list[str]:
    return server.accepted_ids()


# -- the transport ------------------------------------------------------------------------------

def test_one_connection_for_many_mails_and_no_noop_while_busy(server):
    transport = SMTPTransport("127.0.0.1", server.port, timeout=5)
    for n in range(5):
        send(transport, n)
    transport.close()
    assert ids(server) == [f"<{n}@x>" for n in range(5)]
    assert (server.handler.ehlos, server.handler.noops) == (1, 0)
    wait_until(lambda: server.handler.quits == 1, message="QUIT on close")


def test_noop_before_reusing_an_idle_connection(server):
    transport = SMTPTransport("127.0.0.1", server.port, timeout=5, noop_after_idle=0)
    for n in range(3):
        send(transport, n)
    transport.close()
    assert (server.handler.ehlos, server.handler.noops) == (1, 2)


def test_server_restarted_between_two_mails_each_arrives_once(server):
    transport = SMTPTransport("127.0.0.1", server.port, timeout=5)
    send(transport, 1)
    server.stop()  # the reused connection dies with the server
    server.restart()
    send(transport, 2)  # no NOOP (not idle): MAIL FROM fails, then a fresh connection
    transport.close()
    assert ids(server) == ["<1@x>", "<2@x>"]
    assert server.handler.ehlos == 2


def test_server_closing_after_each_message(server):
    server.handler.close_after = 1
    transport = SMTPTransport("127.0.0.1", server.port, timeout=5)
    for n in range(4):
        send(transport, n)
    transport.close()
    assert ids(server) == [f"<{n}@x>" for n in range(4)]
    assert server.handler.ehlos == 4


def test_a_failure_after_data_is_not_resent(server):
    transport = SMTPTransport("127.0.0.1", server.port, timeout=5)
    send(transport, 1)
    server.handler.drop_before_reply = True  # stores the mail, then hangs up without a reply
    with pytest.raises(TransientMailError, match="connection closed"):
        send(transport, 2)
    server.handler.drop_before_reply = False
    assert ids(server) == ["<1@x>", "<2@x>"]  # stored once, not sent again by the transport
    send(transport, 3)
    transport.close()
    assert ids(server) == ["<1@x>", "<2@x>", "<3@x>"]


def test_a_fresh_connection_that_fails_is_not_retried():
    transport = SMTPTransport("127.0.0.1", free_port(), timeout=2)
    with pytest.raises(TransientMailError, match="Refused"):
        send(transport, 1)


@pytest.mark.parametrize("cap, n", [(2, 5), (1, 3), (0, 4)])
def test_max_messages_per_connection(server, cap, n):
    transport = SMTPTransport("127.0.0.1", server.port, timeout=5, max_messages=cap)
    for i in range(n):
        send(transport, i)
    transport.close()
    assert ids(server) == [f"<{i}@x>" for i in range(n)]
    assert server.handler.ehlos == (math.ceil(n / cap) if cap else 1)
    wait_until(lambda: server.handler.quits == server.handler.ehlos, message="every QUIT")


def test_close_closes_every_threads_connection(server):
    transport = SMTPTransport("127.0.0.1", server.port, timeout=5)
    threads = [threading.Thread(target=send, args=(transport, n)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(ids(server)) == ["<0@x>", "<1@x>", "<2@x>"]
    assert server.handler.ehlos == 3
    transport.close()
    wait_until(lambda: server.handler.quits == 3, message="3 QUITs")


def test_the_setting_reaches_the_transport():
    from pyramid_examcache.mail.transports import make_transport

    default = parse_mail_settings({"mail.transport": "smtp"})
    assert default.smtp_max_messages_per_connection == 100
    assert make_transport(default).max_messages == 100
    capped = parse_mail_settings({"mail.transport": "smtp",
                                  "mail.smtp_max_messages_per_connection": "2"})
    assert make_transport(capped).max_messages == 2


# -- the consumer ------------------------------------------------------------------------------

@pytest.fixture
def system(server, db, pg_url, private_redis, tmp_path):
    consumers: list[ConsumerProcess] = []

    def build(**overrides):
        settings = {"sqlalchemy.url": pg_url, "mail.transport": "smtp", "mail.host": "127.0.0.1",
                    "mail.port": server.port, "mail.default_sender": SENDER,
                    "mail.queue_url": private_redis.url,
                    "mail.queue_name": f"mailtest-{uuid.uuid4().hex[:8]}",
                    "mail.retry_delay": "0.5", "mail.relay_interval": "1", "mail.workers": "1",
                    "mail.lease": "3", "mail.shutdown_timeout": "5",
                    **{k: str(v) for k, v in overrides.items()}}
        ini = write_ini(str(tmp_path / "mail.ini"), settings)
        consumer = ConsumerProcess(ini, str(tmp_path / "consumer.log"))
        consumers.append(consumer)
        return TestApp(make_app(pg_url, settings, engine=db)), consumer

    yield build
    for consumer in consumers:
        consumer.stop()


def queue_mails(testapp, n: int, tag: str) -> list[str]:
    return [testapp.post_json("/register", {"email": f"{tag}{i}@example.com"}, status=201)
            .json["jobId"] for i in range(n)]


def delivered_once(server, db, jobs: list[str]) -> None:
    expected = sorted(f"<{j}@exams.example>" for j in jobs)
    wait_until(lambda: len(ids(server)) >= len(jobs), timeout=30, message="all delivered")
    assert sorted(ids(server)) == expected
    wait_until(lambda: all(_state(db, j) == "completed" for j in jobs), message="completed")
    with db.connect() as conn:
        attempts = conn.execute(select(outbox_table.c.attempts)
                                .where(outbox_table.c.id.in_(jobs))).scalars().all()
    assert attempts == [1] * len(jobs)  # a reconnect is no attempt


def _state(db, job_id):
    with db.connect() as conn:
        return conn.execute(select(outbox_table.c.state)
                            .where(outbox_table.c.id == job_id)).scalar()


def test_consumer_caps_messages_per_connection_and_closes_on_stop(system, server, db):
    testapp, consumer = system(**{"mail.smtp_max_messages_per_connection": 2})
    jobs = queue_mails(testapp, 5, "cap")
    consumer.start()
    delivered_once(server, db, jobs)
    assert server.handler.ehlos == math.ceil(5 / 2)
    consumer.stop()  # the last connection (one message) is closed with QUIT
    wait_until(lambda: server.handler.quits == 3, message="3 QUITs")
    assert len(ids(server)) == 5


def test_consumer_survives_the_server_dropping_a_reused_connection(system, server, db):
    testapp, consumer = system(**{"mail.workers": 2})
    consumer.start()
    first = queue_mails(testapp, 2, "before")
    delivered_once(server, db, first)
    server.stop()  # between two jobs: both workers' connections die
    server.restart()
    second = queue_mails(testapp, 4, "after")
    delivered_once(server, db, first + second)


def test_consumer_with_a_server_closing_after_every_two_messages(system, server, db):
    server.handler.close_after = 2
    testapp, consumer = system(**{"mail.workers": 2, "mail.smtp_max_messages_per_connection": 0})
    jobs = queue_mails(testapp, 12, "closing")
    consumer.start()
    delivered_once(server, db, jobs)
    assert server.handler.ehlos >= 6  # at most two messages per connection
