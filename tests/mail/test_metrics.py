"""The consumer's Prometheus metrics (``examcache-consumer --metrics-port``): scrape, send,
scrape again -- deliveries, failures, latency and jobs by state moved by exactly what was
done. A real consumer process, Redis queue, PostgreSQL outbox and aiosmtpd sink."""
from __future__ import annotations

import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from webtest import TestApp

from ..conftest import free_port
from .support import ConsumerProcess, make_app, wait_until, write_ini

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_consumer_metrics_move_by_what_was_done(db, pg_url, private_redis, smtp_server, tmp_path):
    settings = {"sqlalchemy.url": pg_url, "mail.transport": "smtp", "mail.host": "127.0.0.1",
                "mail.port": str(smtp_server.port), "mail.queue_url": private_redis.url,
                "mail.queue_name": f"metrics-{uuid.uuid4().hex[:8]}", "mail.relay_interval": "1",
                "mail.default_sender": "no-reply@example.com"}
    port = free_port()
    consumer = ConsumerProcess(write_ini(str(tmp_path / "m.ini"), settings),
                               str(tmp_path / "consumer.log"), ["--metrics-port", str(port)])
    app = TestApp(make_app(pg_url, settings, engine=db))
    consumer.start()
    try:
        before = wait_until(lambda: _try_scrape(port), timeout=20, message="metrics server")
        smtp_server.handler.replies = ["250 OK", "550 5.1.1 no such user", "250 OK"]
        jobs = [app.post_json("/register", {"email": f"m{i}@example.com"}, status=201)
                .json["jobId"] for i in range(3)]
        wait_until(lambda: all(app.get(f"/jobs/{j}").json["state"] in ("completed", "failed")
                               for j in jobs), timeout=30, message="all finished")
        after = scrape(port)
    finally:
        consumer.stop()
    moved = {name: value(after, name) - value(before, name)
             for name in ("examcache_mail_deliveries_total",
                          "examcache_mail_delivery_latency_seconds_count")}
    assert moved == {"examcache_mail_deliveries_total": 2,
                     "examcache_mail_delivery_latency_seconds_count": 2}
    assert value(after, "examcache_mail_failures_total", reason="permanent") - value(
        before, "examcache_mail_failures_total", reason="permanent") == 1
    assert value(after, "examcache_mail_retries_total") == value(before, "examcache_mail_retries_total")
    assert value(after, "examcache_mail_jobs", state="completed") - value(
        before, "examcache_mail_jobs", state="completed") == 2
    assert value(after, "examcache_mail_jobs", state="failed") - value(
        before, "examcache_mail_jobs", state="failed") == 1
    assert value(after, "examcache_mail_oldest_waiting_seconds") == 0


def _try_scrape(port: int):
    try:
        return scrape(port)
    except OSError:
        return None


def test_metrics_port_without_prometheus_is_explained(monkeypatch):
    """The consumer refuses --metrics-port clearly when the extra is missing."""
    import sys

    from pyramid_examcache.scripts import consumer

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "pyramid_examcache.metrics.mail", raising=False)
    with pytest.raises(Exception, match=r"pyramid_examcache\[metrics\]"):
        consumer._metrics_observer()
