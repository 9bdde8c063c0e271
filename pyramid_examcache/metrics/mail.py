"""The mailer's metrics: jobs by state from the outbox (the truth, read at scrape time) and,
in the consumer, deliveries, retries, failures and the delivery latency (a web process
exposes them unmoved: their help says so)."""
from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from ..mail import outbox

#: in the help of every metric only the consumer moves (a web process exposes it, unmoved)
_BY_CONSUMER = " (counted by the examcache-consumer process, which delivers)"

DELIVERIES = Counter("examcache_mail_deliveries", "Mails delivered (accepted by the SMTP server)"
                     + _BY_CONSUMER)
RETRIES = Counter("examcache_mail_retries", "Delivery attempts that failed transiently and "
                  "will be retried" + _BY_CONSUMER)
FAILURES = Counter("examcache_mail_failures", "Mails that failed for good, by reason "
                   "(permanent: a 5xx or a bad message; expired: mail.max_age reached)"
                   + _BY_CONSUMER,
                   ["reason"])
LATENCY = Histogram("examcache_mail_delivery_latency_seconds", "Seconds from queueing (or a "
                    "retry by hand) to delivery" + _BY_CONSUMER,
                    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400))
for _reason in ("permanent", "expired"):
    FAILURES.labels(_reason)


def observe(outcome: str, row: Any, reason: str | None) -> None:
    """The consumer's observer of one delivery attempt (see ``register_tasks``)."""
    if outcome == outbox.COMPLETED:
        DELIVERIES.inc()
        if row is not None:
            started = outbox.started_at(row)
            LATENCY.observe(max(0.0, (outbox.utcnow() - started).total_seconds()))
    elif outcome == outbox.DELAYED:
        RETRIES.inc()
    elif outcome == outbox.FAILED:
        FAILURES.labels("expired" if reason and "mail.max_age" in reason else "permanent").inc()


class OutboxCollector:
    """``examcache_mail_jobs{state}`` and ``examcache_mail_oldest_waiting_seconds``."""

    def __init__(self, engine_source: Any) -> None:
        self.engine_source = engine_source  # a callable: the engine is built lazily

    def collect(self):
        t = outbox.outbox_table
        jobs = GaugeMetricFamily("examcache_mail_jobs", "Mail jobs in the outbox by state",
                                 labels=["state"])
        oldest = GaugeMetricFamily("examcache_mail_oldest_waiting_seconds",
                                   "Age of the oldest mail waiting to be sent (0 if none)")
        with self.engine_source().connect() as conn:
            counts = dict(conn.execute(select(t.c.state, func.count()).group_by(t.c.state)).all())
            first = conn.execute(select(func.min(t.c.created_at))
                                 .where(t.c.state == outbox.WAITING)).scalar()
        for state in outbox.STATES:
            jobs.add_metric([state], counts.get(state, 0))
        age = 0.0
        if first is not None:
            age = max(0.0, (outbox.utcnow() - outbox.as_utc(first)).total_seconds())
        oldest.add_metric([], age)
        yield jobs
        yield oldest


__all__ = ["DELIVERIES", "FAILURES", "LATENCY", "OutboxCollector", "RETRIES", "observe"]
