"""A delivery's slot under ``mail.rate_limit`` (:mod:`.ratelimit`), taken after the claim.

:func:`take_slot` asks the limiter for the claimed row's recipients. Refused (or the
limiter's storage unreachable), the job is *held back*: one conditional UPDATE gives the
attempt back -- ``delayed``, ``attempts`` as before the claim (throttling is no attempt),
``next_attempt_at`` when the limiter expects a free slot, ``enqueued_at`` the same (the
relay leaves it to the queue, as for a scheduled row) -- then
:class:`huey.exceptions.RetryTask` re-schedules the task for then (Huey keeps the task's
priority and does not spend one of its retries). Status and the admin page show the job
``delayed`` with ``nextAttemptAt``; "send now" asks the limiter again. A queue entry lost
meanwhile is pushed again by the relay (``mail.requeue_after``), like a fast retry.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
from typing import Any

from huey.exceptions import RetryTask
from sqlalchemy import update

from . import outbox
from .message import envelope_recipients
from .ratelimit import LimiterUnavailable, SendLimiter, recipient_domains

log = logging.getLogger(__name__)

#: seconds to wait before asking again when the limiter's storage is unreachable
UNAVAILABLE_WAIT = 5.0

def take_slot(engine: Any, limiter: SendLimiter | None, row: Any) -> Any:
    """The slot for the claimed ``row``: ``(limiter, token, windows)`` to pass to
    :func:`end_slot` after the send, or None (no limit). Raises RetryTask when the job is
    held back; returns False when its claim was lost meanwhile (do nothing)."""
    if limiter is None:
        return None
    domains = recipient_domains(envelope_recipients(row.recipients))
    try:
        token, wait, windows = limiter.acquire(domains)
    except LimiterUnavailable as exc:
        log.warning("mail %s not sent: %s; trying again in %.0fs", row.id, exc, UNAVAILABLE_WAIT)
        hold_back(engine, row, UNAVAILABLE_WAIT, str(exc))
        return False
    if wait > 0:
        # a little spread, so that the jobs refused together do not all come back at once
        wait += random.uniform(0.0, min(wait, 1.0) * 0.2)
        hold_back(engine, row, wait, "rate limited")
        return False
    return limiter, token, windows


def end_slot(slot: Any) -> None:
    """The send of ``slot`` is over (delivered or not)."""
    if slot:
        limiter, token, windows = slot
        limiter.finish(token, windows)


def hold_back(engine: Any, row: Any, wait: float, why: str) -> None:
    """Give the claimed attempt back and re-schedule the task in ``wait`` seconds (raises
    RetryTask); returns if the claim was lost meanwhile (nothing to do)."""
    t, now = outbox.outbox_table, outbox.utcnow()
    next_at = now + dt.timedelta(seconds=wait)
    with engine.begin() as conn:
        given_back = conn.execute(
            update(t).where(t.c.id == row.id, t.c.state == outbox.ACTIVE,
                            t.c.attempts == row.attempts)
            .values(state=outbox.DELAYED, attempts=row.attempts - 1, progress=0,
                    lease_until=None, next_attempt_at=next_at, enqueued_at=next_at,
                    updated_at=now)).rowcount == 1
    if not given_back:
        log.info("mail %s: claim lost while throttled; nothing to do", row.id)
        return
    log.info("mail %s %s; next try at %s", row.id, why, next_at.isoformat())
    raise RetryTask(f"{why}: held back for {wait:.2f}s", delay=wait)
