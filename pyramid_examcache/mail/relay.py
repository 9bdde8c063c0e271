"""Relay outbox rows to the broker (M2, docs/design/mail.md).

Two entry points, both safe to run concurrently with each other and with workers:

* :func:`push_one` -- the after-commit hook's fast path for one fresh row
  (:func:`push_many` for the rows of a transaction that queued several).
* :func:`relay` -- the periodic job (and consumer start-up): every row that is due.

A row is *due* when it was never pushed (``waiting`` with ``enqueued_at IS NULL``) or
when its earlier push is presumed lost: an ``active`` attempt whose lease expired
(consumer killed mid-send), a ``delayed`` retry or a ``waiting`` push older than
``mail.requeue_after`` (a broker that lost its data) -- or when it is a slow-phase retry
(``delayed`` after more than ``mail.retries`` attempts) or a scheduled row never pushed
whose ``next_attempt_at`` has come: those waits live only in the outbox row, never in the
broker (M3, same page). A scheduled row pushed after its commit waits in the queue (the
task's ``eta``), like a fast-phase retry.

Exactly-once *pushing* per successful enqueue: a row is claimed by a conditional
``UPDATE`` (or ``SELECT … FOR UPDATE SKIP LOCKED`` in batches on PostgreSQL) and its
``enqueued_at`` is written in the same transaction as the push; a failed push rolls the
claim back and leaves the row for the next relay run. Delivery stays at-least-once (a
crash between push and commit re-pushes); the worker's own claim on the row makes a
duplicate queue entry a no-op.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Protocol

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.engine import Engine

from .outbox import ACTIVE, DELAYED, WAITING, as_utc, outbox_table, utcnow

log = logging.getLogger(__name__)


class Broker(Protocol):
    """What the relay pushes job ids to (:class:`~.queue.HueyBroker`)."""

    def push(self, job_id: str, eta: Any = None, priority: int = 0) -> None:
        """Hand the job to the queue now; raise when the queue is unreachable.

        A broker that takes ``push(job_id, eta=datetime)`` (:class:`~.queue.HueyBroker`)
        runs the job at ``eta`` (a scheduled row, :func:`push_one`). ``priority`` is the
        row's (Huey's number, higher first; :mod:`.priority`): every push of a job keeps it.
        It is given only when not normal (0), so a broker without priorities still works."""


def _rank(priority: int | None) -> dict[str, int]:
    """The ``priority`` keyword of a push: none for a normal row (0, or NULL)."""
    return {"priority": priority} if priority else {}


def push_one(engine: Engine, broker: Broker, job_id: str, now: dt.datetime | None = None) -> bool:
    """Push a never-pushed ``waiting`` row to the broker; ``False`` if not pushed (or already).

    A never-pushed *scheduled* row (``delayed``, no attempt yet) is pushed with its due time
    as the task's ``eta`` (the queue holds the wait, as it does for the fast retries), and
    its ``enqueued_at`` is that due time: when the push takes effect."""
    t = outbox_table
    now = now or utcnow()
    ahead = and_(t.c.state == DELAYED, t.c.next_attempt_at > now)
    claim = (update(t).where(t.c.id == job_id, t.c.enqueued_at.is_(None),
                             or_(t.c.state == WAITING,
                                 and_(t.c.state == DELAYED, t.c.attempts == 0)))
             .values(enqueued_at=case((ahead, t.c.next_attempt_at), else_=now))
             .returning(t.c.state, t.c.next_attempt_at, t.c.priority))
    try:
        with engine.begin() as conn:
            row = conn.execute(claim).first()
            if row is None:
                return False
            eta = as_utc(row.next_attempt_at) if row.state == DELAYED else None
            if eta is not None and eta > now:  # the row stays locked until the push is recorded
                broker.push(job_id, eta=eta, **_rank(row.priority))
            else:
                broker.push(job_id, **_rank(row.priority))
        return True
    except Exception as exc:  # noqa: BLE001 -- broker down: the periodic relay retries
        log.warning("mail %s not pushed to the queue (%s); the relay will retry", job_id, exc)
        return False


#: rows claimed per transaction by :func:`push_many`
PUSH_CHUNK = 500


def push_many(engine: Engine, broker: Broker, job_ids: list[str],
              now: dt.datetime | None = None) -> int:
    """:func:`push_one` for the rows one transaction queued: one claim (an ``UPDATE ...
    WHERE id IN (...)``) and one commit per :data:`PUSH_CHUNK` rows instead of one per row,
    higher priorities pushed first. A chunk whose push fails is rolled back whole and left
    to the relay (rows pushed before the failure may then be pushed twice: a duplicate
    queue entry is a no-op, the worker's claim decides). Returns how many were pushed."""
    pushed = 0
    for start in range(0, len(job_ids), PUSH_CHUNK):
        pushed += _push_chunk(engine, broker, job_ids[start:start + PUSH_CHUNK], now or utcnow())
    return pushed


def _push_chunk(engine: Engine, broker: Broker, job_ids: list[str], now: dt.datetime) -> int:
    t = outbox_table
    ahead = and_(t.c.state == DELAYED, t.c.next_attempt_at > now)
    claim = (update(t).where(t.c.id.in_(job_ids), t.c.enqueued_at.is_(None),
                             or_(t.c.state == WAITING,
                                 and_(t.c.state == DELAYED, t.c.attempts == 0)))
             .values(enqueued_at=case((ahead, t.c.next_attempt_at), else_=now))
             .returning(t.c.id, t.c.state, t.c.next_attempt_at, t.c.priority))
    order = {job_id: i for i, job_id in enumerate(job_ids)}
    try:
        with engine.begin() as conn:
            rows = sorted(conn.execute(claim).all(),
                          key=lambda r: (-(r.priority or 0), order.get(r.id, 0)))
            for row in rows:
                eta = as_utc(row.next_attempt_at) if row.state == DELAYED else None
                if eta is not None and eta > now:
                    broker.push(row.id, eta=eta, **_rank(row.priority))
                else:
                    broker.push(row.id, **_rank(row.priority))
        return len(rows)
    except Exception as exc:  # noqa: BLE001 -- broker down: the periodic relay retries
        log.warning("%d mail(s) not pushed to the queue (%s); the relay will retry",
                    len(job_ids), exc)
        return 0


def _due(now: dt.datetime, requeue_after: float, retries: int):
    t = outbox_table
    stale = now - dt.timedelta(seconds=requeue_after)
    return or_(
        and_(t.c.state == WAITING, or_(t.c.enqueued_at.is_(None), t.c.enqueued_at < stale)),
        and_(t.c.state == ACTIVE, t.c.lease_until < now),
        # the slow phase, and scheduled rows never pushed (the queue was down): no broker
        # entry waits for these; push once when due
        and_(t.c.state == DELAYED, or_(t.c.attempts > retries, t.c.attempts == 0),
             t.c.next_attempt_at <= now,
             or_(t.c.enqueued_at.is_(None), t.c.enqueued_at < t.c.next_attempt_at)),
        # a fast-phase retry (or a slow-phase push) that the broker seems to have lost
        and_(t.c.state == DELAYED, t.c.next_attempt_at < stale),
    )


def relay(engine: Engine, broker: Broker, settings: Any, *, limit: int = 500,
          now: dt.datetime | None = None) -> int:
    """Push every due row (up to ``limit``) to the broker; returns how many were pushed.

    ``settings`` gives ``requeue_after`` and ``retries`` (the ``mail.*`` settings). Stops
    at the first broker error, keeping what was pushed so far. Higher priorities are
    pushed first, each with its row's priority.
    """
    t = outbox_table
    now = now or utcnow()
    query = (select(t.c.id, t.c.state, t.c.priority)
             .where(_due(now, settings.requeue_after, settings.retries))
             .order_by(t.c.priority.desc(), t.c.created_at).limit(limit)
             .with_for_update(skip_locked=True))
    pushed: list = []
    with engine.begin() as conn:
        for row in conn.execute(query).all():
            try:
                broker.push(row.id, **_rank(row.priority))
            except Exception as exc:  # noqa: BLE001
                log.warning("relay stopped, the queue is unreachable (%s)", exc)
                break
            pushed.append(row)
        _record_pushed(conn, pushed, now)
    if pushed:
        log.info("relayed %d mail(s) to the queue", len(pushed))
    return len(pushed)


def _record_pushed(conn, rows: list, now: dt.datetime) -> None:
    t = outbox_table
    by_state: dict[str, list[str]] = {}
    for row in rows:
        by_state.setdefault(row.state, []).append(row.id)
    for state, ids in by_state.items():
        values: dict = {"enqueued_at": now, "updated_at": now}
        if state == ACTIVE:  # the dead attempt is over: the row waits for a new one
            values.update(state=WAITING, progress=0, lease_until=None)
        elif state == DELAYED:
            values.update(next_attempt_at=now)
        conn.execute(update(t).where(t.c.id.in_(ids), t.c.state == state).values(**values))
