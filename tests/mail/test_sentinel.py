"""Mail on a Sentinel-managed Redis (``mail.queue_url = redis+sentinel://…``): the web app
and the ``examcache-consumer`` subprocess find the primary through the sentinels, and
registrations made before, during and after a failover are each delivered exactly once
(a push lost with the old primary is re-queued from the outbox: ``mail.requeue_after``)."""
from __future__ import annotations

import threading
import uuid

import pytest
from webtest import TestApp

from .support import ConsumerProcess, make_app, wait_until, write_ini

pytestmark = pytest.mark.e2e


def test_registrations_across_a_failover_are_delivered_exactly_once(
        sentinel, smtp_server, pg_url, db, tmp_path):
    settings = {
        "sqlalchemy.url": pg_url,
        "mail.transport": "smtp",
        "mail.host": "127.0.0.1",
        "mail.port": smtp_server.port,
        "mail.default_sender": "no-reply@exams.example",
        "mail.queue_url": sentinel.url,
        "mail.queue_name": f"mailtest-{uuid.uuid4().hex[:8]}",
        "mail.queue_timeout": "0.5",
        "mail.retry_delay": "0.5",
        "mail.relay_interval": "1",
        "mail.requeue_after": "3",
        "mail.workers": "2",
        "mail.lease": "3",
        "mail.shutdown_timeout": "5",
    }
    testapp = TestApp(make_app(pg_url, settings, engine=db))
    consumer = ConsumerProcess(write_ini(str(tmp_path / "mail.ini"), settings),
                               str(tmp_path / "consumer.log"))
    consumer.start()
    jobs: list[str] = []
    statuses: list[int] = []

    def register(i: int) -> None:
        res = testapp.post_json("/register", {"email": f"s{i}@example.com"}, expect_errors=True)
        statuses.append(res.status_int)
        if res.status_int == 201:
            jobs.append(res.json["jobId"])

    try:
        for i in range(5):
            register(i)
        wait_until(lambda: len(smtp_server.handler.accepted) >= 5, 20, message="5 delivered")
        old = sentinel.primary_port()
        stop = threading.Event()

        def during() -> None:
            i = 100
            while not stop.is_set():
                register(i)
                i += 1
                stop.wait(0.05)

        thread = threading.Thread(target=during)
        thread.start()
        try:
            sentinel.failover()
        finally:
            stop.set()
            thread.join(30)
        for i in range(200, 205):
            register(i)
        assert sentinel.primary_port() != old
        assert statuses and all(s == 201 for s in statuses), statuses
        assert len(jobs) >= 10
        expected = sorted(f"<{j}@exams.example>" for j in jobs)
        wait_until(lambda: len(smtp_server.handler.accepted) >= len(jobs), 60,
                   message=f"{len(jobs)} mails delivered")
        consumer.wait_for_rounds(4)  # a duplicate push (relay, requeue) would have run by now
        accepted = smtp_server.accepted_ids()
        print(f"\n[mail sentinel] {len(jobs)} registrations across a failover "
              f"{old} -> {sentinel.primary_port()}: {len(accepted)} delivered, "
              f"{len(accepted) - len(set(accepted))} duplicates")
        assert sorted(accepted) == expected  # every one, once
    finally:
        consumer.stop()
