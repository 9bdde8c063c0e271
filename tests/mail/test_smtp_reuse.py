"""SMTP connection reuse: one connection per worker kept across mails, NOOP after idling,
``mail.smtp_max_messages_per_connection``, and a dropped reused connection replaced without
losing or duplicating the mail in hand -- the transport against aiosmtpd, then the
``examcache-consumer`` process (PostgreSQL outbox, private Redis)."""
from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select
from webtest import TestApp

from pyramid_examcache.mail.outbox import outbox_table
from pyramid_examcache.mail.transports import SMTPTransport, TransientMailError
from pyramid_examcache.settings import parse_mail_settings

from ..conftest import free_port
from .support import (ConsumerProcess, ScriptedHandler, SMTPServer, make_app, queue_mails,
                      wait_until, write_ini)
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
    #: stall the RCPT of the n-th recipient, or the reply to the n-th stored message, until
    #: ``release`` is set (0: never)
    stall_rcpt_at: int = 0
    #: answer MAIL FROM on a connection that already carried a mail with 421 and close it,
    #: this many times
    closing_421: int = 0
    stall_data_at: int = 0
    rcpts: int = 0
    stalled_id: str = ""
    rcpt_stalled: threading.Event = field(default_factory=threading.Event)
    data_stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def _stall(self, reached: threading.Event) -> None:
        reached.set()
        deadline = time.monotonic() + 120
        while not self.release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

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

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.closing_421 and getattr(session, "messages", 0) > 0:
            self.closing_421 -= 1  # a provider closing a reused connection
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.7.0 Too many messages on this connection, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpts += 1
        if self.rcpts == self.stall_rcpt_at:  # this mail is not stored until released
            await self._stall(self.rcpt_stalled)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250") and len(self.accepted) == self.stall_data_at:
            # stored: the reply waits for the release
            self.stalled_id = str(self.accepted[-1]["Message-ID"])
            await self._stall(self.data_stalled)
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
    smtp.handler.release.set()  # stalled sessions of a killed consumer end
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


def idle_for(seconds: float) -> None:
    """Let the consumer's connection sit unused for ``seconds`` (a precondition, not a proof)."""
    start = time.monotonic()
    wait_until(lambda: time.monotonic() - start > seconds, timeout=seconds + 5,
               message=f"{seconds}s idle")


NOOP_AFTER_IDLE = 5.0  # SMTPTransport's noop_after_idle (no setting)


def test_consumer_checks_an_idle_connection_with_noop_and_replaces_a_dead_one(system, server, db):
    """After 5 s unused, a worker's connection is checked with NOOP before the next mail:
    alive, it is reused (no new EHLO); dropped by the server while idle, the NOOP fails and
    the mail goes out on a new connection -- never tried on the dead one ("lost before
    DATA" not logged), delivered once, one attempt."""
    testapp, consumer = system()
    consumer.start()
    first = queue_mails(testapp, 1, "first")
    delivered_once(server, db, first)
    idle_for(NOOP_AFTER_IDLE + 0.5)
    second = queue_mails(testapp, 1, "second")
    delivered_once(server, db, first + second)
    assert (server.handler.ehlos, server.handler.noops) == (1, 1)  # checked, then reused
    idle_for(NOOP_AFTER_IDLE + 0.5)
    server.stop()  # the idle connection dies with the server
    server.restart()
    third = queue_mails(testapp, 1, "third")
    delivered_once(server, db, first + second + third)
    assert server.handler.ehlos == 2 and server.handler.noops == 1  # the NOOP got no reply
    assert "lost before DATA" not in consumer.log()


def test_consumer_resends_on_a_new_connection_after_421_on_a_reused_one(system, server, db):
    """The provider answers MAIL FROM on a reused connection with 421 and closes it: the
    mail goes out on a new connection within the same attempt -- once, one attempt."""
    server.handler.closing_421 = 2
    testapp, consumer = system(**{"mail.smtp_max_messages_per_connection": 0})
    jobs = queue_mails(testapp, 5, "closing421")
    consumer.start()
    delivered_once(server, db, jobs)
    assert server.handler.closing_421 == 0  # both 421s were met
    assert server.handler.ehlos == 3
    assert consumer.log().count("lost before DATA") == 2


def test_consumer_killed_mid_batch_on_reused_connections_loses_nothing(system, server, db):
    """SIGKILL while two workers hold reused connections, 30 mails queued: one worker waits
    for the reply to a mail the server has stored, the other is in RCPT of the next, 20 are
    still in Redis. After a restart every mail arrives; the only duplicate is the stored one
    (at-least-once), with the same Message-ID; no recipient ever sees two Message-IDs."""
    server.handler.stall_data_at = 8  # the 8th stored mail: stored, reply held
    server.handler.stall_rcpt_at = 10  # the 10th recipient: not stored
    testapp, consumer = system(**{"mail.workers": 2})
    jobs = queue_mails(testapp, 30, "batch")
    consumer.start()
    assert server.handler.data_stalled.wait(30) and server.handler.rcpt_stalled.wait(30)
    assert consumer.kill(signal.SIGKILL) == -signal.SIGKILL
    assert server.handler.ehlos == 2  # two connections, reused for the first 9 mails
    assert len(server.handler.accepted) == 9
    assert _states(db, jobs) == Counter(completed=8, active=2, waiting=20)
    stored_twice = server.handler.stalled_id
    server.handler.release.set()
    consumer.start()
    expected = {f"<{j}@exams.example>" for j in jobs}
    wait_until(lambda: expected <= set(ids(server)), timeout=60, message="all delivered")
    wait_until(lambda: _states(db, jobs) == Counter(completed=30), message="all completed")
    consumer.wait_for_rounds(3)  # a re-queue or a second push would have been sent by now
    copies = Counter(ids(server))
    assert set(copies) == expected  # every copy has its job's Message-ID
    assert {mid: n for mid, n in copies.items() if n > 1} == {stored_twice: 2}
    assert sum(copies.values()) == 31
    by_rcpt: dict[str, set[str]] = {}
    for msg in server.handler.accepted:
        by_rcpt.setdefault(str(msg["To"]), set()).add(str(msg["Message-ID"]))
    assert len(by_rcpt) == 30 and all(len(mids) == 1 for mids in by_rcpt.values())
    attempts = _attempts(db, jobs)
    assert sorted(attempts.values()) == [1] * 28 + [2, 2]  # the two cut off, tried again
    assert attempts[stored_twice.strip("<>").partition("@")[0]] == 2


def _states(db, jobs: list[str]) -> Counter:
    with db.connect() as conn:
        return Counter(conn.execute(select(outbox_table.c.state)
                                    .where(outbox_table.c.id.in_(jobs))).scalars().all())


def _attempts(db, jobs: list[str]) -> dict[str, int]:
    with db.connect() as conn:
        return dict(conn.execute(select(outbox_table.c.id, outbox_table.c.attempts)
                                 .where(outbox_table.c.id.in_(jobs))).all())
