"""The transactional outbox: one row per queued mail, in the application's own database.

The row is written in the request's SQLAlchemy session, so it commits or aborts
with the user's data (M1, docs/design/mail.md). It is also the durable home of the
job's status (M4, same page):
``state`` moves ``waiting -> active -> (delayed -> active)* -> completed | failed``;
:func:`cancel` (the admin page's "cancel") moves ``waiting | delayed -> failed`` with the
reason ``"cancelled by admin"``, and ``retry`` moves ``failed -> waiting``.

Add the table to your schema in one of two ways:

* include :data:`metadata` in Alembic's ``target_metadata`` (autogenerate sees it), or
* call :func:`create_outbox` / :func:`drop_outbox` from a hand-written migration::

      from pyramid_examcache.mail.outbox import create_outbox, drop_outbox

      def upgrade():
          create_outbox(op)

      def downgrade():
          drop_outbox(op)

Columns used for relaying (``enqueued_at``, ``lease_until``, ``next_attempt_at``,
``attempts`` as a fencing token, ``retried_at``, ``failed_recipients``, ``attachments``)
are described for operators in ``docs/design/mail.md``.

``recipients`` is ``{"to": [...], "cc": [...], "bcc": [...]}`` (a plain list, from older
rows, is read as ``to``).

Upgrading an existing table: in a new Alembic revision per release call
:func:`add_new_columns` in ``upgrade()`` (``op.add_column`` of that release's columns,
skipping those that exist) and :func:`drop_new_columns` in ``downgrade()``: release 1
added ``failed_recipients`` and ``retried_at``, release 2 ``attachments``.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (JSON, Column, DateTime, Index, Integer, MetaData, String, Table, Text,
                        and_, or_, select, update)
from sqlalchemy.engine import Connection, Row

from ..clock import as_utc, utcnow  # noqa: F401 -- outbox.utcnow: the rows' clock

TABLE_NAME = "examcache_mail_outbox"

WAITING = "waiting"
ACTIVE = "active"
DELAYED = "delayed"
COMPLETED = "completed"
FAILED = "failed"
STATES = (WAITING, ACTIVE, DELAYED, COMPLETED, FAILED)

#: Seconds a ``delayed`` row may be early when claimed (clock granularity of the scheduler).
EARLY_SLACK = 1.0


def _columns() -> list[Column]:
    return [
        Column("id", String(64), primary_key=True),
        Column("message_id", String(255), nullable=False),
        Column("sender", String(320), nullable=False),
        Column("recipients", JSON, nullable=False),
        Column("subject", Text, nullable=False),
        Column("html", Text, nullable=False),
        Column("text", Text, nullable=True),
        Column("headers", JSON, nullable=True),
        Column("state", String(16), nullable=False, default=WAITING),
        Column("progress", Integer, nullable=False, default=0),
        Column("attempts", Integer, nullable=False, default=0),
        Column("failed_reason", Text, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("enqueued_at", DateTime(timezone=True), nullable=True),
        Column("lease_until", DateTime(timezone=True), nullable=True),
        Column("next_attempt_at", DateTime(timezone=True), nullable=True),
        Column("finished_at", DateTime(timezone=True), nullable=True),
        *_new_columns(),
    ]


#: columns added after the first release, by release (see :func:`add_new_columns`)
_ADDED = {
    1: lambda: [Column("failed_recipients", JSON, nullable=True),
                Column("retried_at", DateTime(timezone=True), nullable=True)],
    2: lambda: [Column("attachments", JSON, nullable=True)],
}


def _new_columns(release: int | None = None) -> list[Column]:
    """Columns added after the first release: those of ``release``, or all of them."""
    releases = sorted(_ADDED) if release is None else [release]
    return [column for r in releases for column in _ADDED[r]()]


def add_new_columns(op: Any, release: int = 1) -> None:
    """Add the columns of ``release`` to an outbox created earlier (an Alembic ``op``).

    Release 1: ``failed_recipients``, ``retried_at``; release 2: ``attachments``. Call it
    once per release in its own revision (``add_new_columns(op, 2)``). Idempotent:
    columns that exist (a table made by a newer :func:`create_outbox`, which has them all)
    are skipped, so one revision upgrades old and new databases.
    """
    from sqlalchemy import inspect

    if release not in _ADDED:
        raise ValueError(f"no outbox columns were added in release {release!r}")
    existing = {c["name"] for c in inspect(op.get_bind()).get_columns(TABLE_NAME)}
    for column in _new_columns(release):
        if column.name not in existing:
            op.add_column(TABLE_NAME, column)


def drop_new_columns(op: Any, release: int = 1) -> None:
    """The downgrade of :func:`add_new_columns` for ``release``."""
    for column in reversed(_new_columns(release)):
        op.drop_column(TABLE_NAME, column.name)


_INDEXES = (
    (f"ix_{TABLE_NAME}_state_enqueued", ("state", "enqueued_at")),
    (f"ix_{TABLE_NAME}_state_finished", ("state", "finished_at")),
)

#: Add this to your Alembic ``target_metadata`` (or create it with :func:`create_outbox`).
metadata = MetaData()

outbox_table = Table(TABLE_NAME, metadata, *_columns())
for _name, _cols in _INDEXES:
    Index(_name, *(outbox_table.c[c] for c in _cols))


def create_outbox(op: Any) -> None:
    """Create the outbox table and its indexes from an Alembic migration (``op``)."""
    op.create_table(TABLE_NAME, *_columns())
    for name, cols in _INDEXES:
        op.create_index(name, TABLE_NAME, list(cols))


def drop_outbox(op: Any) -> None:
    """Drop the outbox table (and its indexes) from an Alembic migration (``op``)."""
    for name, _cols in _INDEXES:
        op.drop_index(name, table_name=TABLE_NAME)
    op.drop_table(TABLE_NAME)


def new_row(job_id: str, message_id: str, sender: str, recipients: list[str] | dict,
            subject: str, html: str, text: str | None, headers: dict[str, str],
            now: dt.datetime, attachments: list[dict] | None = None) -> dict:
    """The values of a freshly queued (``waiting``, not yet pushed) row."""
    return dict(id=job_id, message_id=message_id, sender=sender, recipients=recipients,
                subject=subject, html=html, text=text, headers=headers or None, state=WAITING,
                progress=0, attempts=0, created_at=now, updated_at=now,
                attachments=attachments or None)


# -- the state machine, one conditional UPDATE per transition ---------------------------------

def claim(conn: Connection, job_id: str, lease: float, now: dt.datetime) -> Row | None:
    """Start an attempt: ``waiting``/due ``delayed``/lease-expired ``active`` -> ``active``.

    Returns the row (with ``attempts`` already counting this attempt) or ``None`` when the
    row is unknown, finished, or being worked on by someone else -- the caller then does
    nothing, which is what makes duplicate queue entries harmless.
    """
    t = outbox_table
    claimable = or_(
        t.c.state == WAITING,
        and_(t.c.state == DELAYED,
             or_(t.c.next_attempt_at.is_(None),
                 t.c.next_attempt_at <= now + dt.timedelta(seconds=EARLY_SLACK))),
        and_(t.c.state == ACTIVE, or_(t.c.lease_until.is_(None), t.c.lease_until < now)),
    )
    stmt = (update(t).where(t.c.id == job_id, claimable)
            .values(state=ACTIVE, attempts=t.c.attempts + 1, progress=10,
                    lease_until=now + dt.timedelta(seconds=lease), next_attempt_at=None,
                    updated_at=now)
            .returning(*t.c))
    return conn.execute(stmt).first()


def _finish(conn: Connection, job_id: str, attempt: int, values: dict) -> bool:
    t = outbox_table
    stmt = (update(t).where(t.c.id == job_id, t.c.state == ACTIVE, t.c.attempts == attempt)
            .values(**values))
    return conn.execute(stmt).rowcount == 1


def mark_completed(conn: Connection, job_id: str, attempt: int, now: dt.datetime,
                   failed_recipients: dict[str, str] | None = None) -> bool:
    return _finish(conn, job_id, attempt, dict(
        state=COMPLETED, progress=100, failed_reason=None, lease_until=None,
        next_attempt_at=None, failed_recipients=failed_recipients or None,
        finished_at=now, updated_at=now))


def mark_failed(conn: Connection, job_id: str, attempt: int, reason: str,
                now: dt.datetime, failed_recipients: dict[str, str] | None = None) -> bool:
    return _finish(conn, job_id, attempt, dict(
        state=FAILED, progress=100, failed_reason=reason, lease_until=None,
        next_attempt_at=None, failed_recipients=failed_recipients or None,
        finished_at=now, updated_at=now))


def mark_delayed(conn: Connection, job_id: str, attempt: int, reason: str,
                 next_attempt_at: dt.datetime, now: dt.datetime,
                 failed_recipients: dict[str, str] | None = None) -> bool:
    return _finish(conn, job_id, attempt, dict(
        state=DELAYED, progress=0, failed_reason=reason, lease_until=None,
        next_attempt_at=next_attempt_at, failed_recipients=failed_recipients or None,
        updated_at=now))


def retry_values(now: dt.datetime) -> dict:
    """A ``failed`` row back to ``waiting``, not yet pushed, with a fresh attempt budget:
    ``attempts`` 0 (the fast retries run again) and ``mail.max_age`` counted from now.
    The last ``failed_reason`` is kept until the next attempt ends."""
    return dict(state=WAITING, progress=0, attempts=0, enqueued_at=None, lease_until=None,
                next_attempt_at=None, finished_at=None, failed_recipients=None,
                retried_at=now, updated_at=now)


def started_at(row: Row) -> dt.datetime:
    """Where ``mail.max_age`` counts from: the last :func:`retry`, else the creation."""
    return as_utc(row.retried_at or row.created_at)


#: the ``failed_reason`` of a job cancelled from the admin page (:func:`cancel`)
CANCELLED_REASON = "cancelled by admin"
#: states :func:`cancel` accepts: not yet started (an ``active`` attempt is not interrupted)
CANCELLABLE = (WAITING, DELAYED)


def cancel_values(now: dt.datetime, reason: str = CANCELLED_REASON) -> dict:
    """A ``waiting`` or ``delayed`` row to ``failed`` with ``reason``: nothing more is sent,
    :func:`retry` can give it a new life, and the purge deletes it after ``mail.keep_failed``."""
    return dict(state=FAILED, progress=100, failed_reason=reason, lease_until=None,
                next_attempt_at=None, finished_at=now, updated_at=now)


def cancel_statement(job_id: str, now: dt.datetime, reason: str = CANCELLED_REASON) -> Any:
    """The conditional UPDATE of :func:`cancel` (for a caller writing through its session)."""
    t = outbox_table
    return (update(t).where(t.c.id == job_id, t.c.state.in_(CANCELLABLE))
            .values(**cancel_values(now, reason)))


def cancel(conn: Connection, job_id: str, now: dt.datetime,
           reason: str = CANCELLED_REASON) -> bool:
    """Cancel a job that has not started: ``waiting``/``delayed`` -> ``failed`` with ``reason``.

    One conditional UPDATE, so it races safely with :func:`claim`: whichever commits first
    wins; a job already ``active`` (or finished) is left alone and ``False`` is returned. A
    queue entry pushed earlier then finds a ``failed`` row, which :func:`claim` refuses.
    """
    return conn.execute(cancel_statement(job_id, now, reason)).rowcount == 1


def release(conn: Connection, job_id: str, now: dt.datetime) -> bool:
    """Give an interrupted ``active`` attempt back: ``waiting`` and not pushed (relay it)."""
    t = outbox_table
    stmt = (update(t).where(t.c.id == job_id, t.c.state == ACTIVE)
            .values(state=WAITING, progress=0, lease_until=None, enqueued_at=None,
                    updated_at=now))
    return conn.execute(stmt).rowcount == 1


def get(conn: Connection, job_id: str) -> Row | None:
    return conn.execute(select(outbox_table).where(outbox_table.c.id == job_id)).first()
