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
:func:`add_new_columns` in ``upgrade()`` (``op.add_column`` of that release's columns and
``op.create_index`` of its indexes, skipping those that exist) and :func:`drop_new_columns`
in ``downgrade()``: release 1 added ``failed_recipients`` and ``retried_at``, release 2
``attachments``, release 3 ``idempotency_key`` (with a unique index) and ``send_at``,
release 4 ``priority``.
Idempotent inserts (:func:`insert_once`) and scheduled rows: docs/design/mail.md.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    and_,
    case,
    exc,
    or_,
    select,
    text,
    update,
)
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
_ADDED: dict[int, Callable[[], list[Column]]] = {
    1: lambda: [Column("failed_recipients", JSON, nullable=True),
                Column("retried_at", DateTime(timezone=True), nullable=True)],
    2: lambda: [Column("attachments", JSON, nullable=True)],
    3: lambda: [Column("idempotency_key", String(255), nullable=True),
                Column("send_at", DateTime(timezone=True), nullable=True)],
    # Huey's priority of the job (:mod:`.priority`: 10 high, 0 normal, -10 low); rows
    # written before release 4 read as normal
    4: lambda: [Column("priority", SmallInteger, nullable=False, default=0,
                       server_default=text("0"))],
}

#: longest ``idempotency_key`` (the column's length)
MAX_KEY_LENGTH = 255


def _new_columns(release: int | None = None) -> list[Column]:
    """Columns added after the first release: those of ``release``, or all of them."""
    releases = sorted(_ADDED) if release is None else [release]
    return [column for r in releases for column in _ADDED[r]()]


def add_new_columns(op: Any, release: int = 1) -> None:
    """Add the columns of ``release`` to an outbox created earlier (an Alembic ``op``).

    Release 1: ``failed_recipients``, ``retried_at``; release 2: ``attachments``; release
    3: ``idempotency_key`` (and its unique index), ``send_at``; release 4: ``priority``
    (old rows read as normal). Call it once per release in
    its own revision (``add_new_columns(op, 3)``). Idempotent: columns and indexes that
    exist (a table made by a newer :func:`create_outbox`, which has them all) are skipped,
    so one revision upgrades old and new databases.
    """
    from sqlalchemy import inspect

    if release not in _ADDED:
        raise ValueError(f"no outbox columns were added in release {release!r}")
    inspector = inspect(op.get_bind())
    existing = {c["name"] for c in inspector.get_columns(TABLE_NAME)}
    for column in _new_columns(release):
        if column.name not in existing:
            op.add_column(TABLE_NAME, column)
    indexes = {i["name"] for i in inspector.get_indexes(TABLE_NAME)}
    for name, cols, unique in _ADDED_INDEXES.get(release, ()):
        if name not in indexes:
            op.create_index(name, TABLE_NAME, list(cols), unique=unique)


def drop_new_columns(op: Any, release: int = 1) -> None:
    """The downgrade of :func:`add_new_columns` for ``release``."""
    for name, _cols, _unique in _ADDED_INDEXES.get(release, ()):
        op.drop_index(name, table_name=TABLE_NAME)
    for column in reversed(_new_columns(release)):
        op.drop_column(TABLE_NAME, column.name)


#: (name, columns, unique) of the indexes added after the first release, by release
_ADDED_INDEXES = {
    3: ((f"ux_{TABLE_NAME}_idempotency_key", ("idempotency_key",), True),),
}
_INDEXES = (
    (f"ix_{TABLE_NAME}_state_enqueued", ("state", "enqueued_at"), False),
    (f"ix_{TABLE_NAME}_state_finished", ("state", "finished_at"), False),
    *(index for r in sorted(_ADDED_INDEXES) for index in _ADDED_INDEXES[r]),
)

#: Add this to your Alembic ``target_metadata`` (or create it with :func:`create_outbox`).
metadata = MetaData()

outbox_table = Table(TABLE_NAME, metadata, *_columns())
for _name, _cols, _unique in _INDEXES:
    Index(_name, *(outbox_table.c[c] for c in _cols), unique=_unique)


def create_outbox(op: Any) -> None:
    """Create the outbox table and its indexes from an Alembic migration (``op``)."""
    op.create_table(TABLE_NAME, *_columns())
    for name, cols, unique in _INDEXES:
        op.create_index(name, TABLE_NAME, list(cols), unique=unique)


def drop_outbox(op: Any) -> None:
    """Drop the outbox table (and those of its indexes that exist: a later revision's
    :func:`drop_new_columns` may have dropped some) from an Alembic migration (``op``)."""
    from sqlalchemy import inspect

    existing = {i["name"] for i in inspect(op.get_bind()).get_indexes(TABLE_NAME)}
    for name, _cols, _unique in _INDEXES:
        if name in existing:
            op.drop_index(name, table_name=TABLE_NAME)
    op.drop_table(TABLE_NAME)


def new_row(job_id: str, message_id: str, sender: str, recipients: list[str] | dict,
            subject: str, html: str, text: str | None, headers: dict[str, str],
            now: dt.datetime, attachments: list[dict] | None = None, *,
            idempotency_key: str | None = None, send_at: dt.datetime | None = None,
            priority: int = 0) -> dict:
    """The values of a freshly queued, not yet pushed row: ``waiting``, or -- with a
    ``send_at`` after ``now`` -- ``delayed`` until then (a *scheduled* row: no attempt yet).
    ``priority`` is Huey's number (:data:`.priority.PRIORITIES`)."""
    scheduled = send_at is not None and send_at > now
    return dict(id=job_id, message_id=message_id, sender=sender, recipients=recipients,
                subject=subject, html=html, text=text, headers=headers or None,
                state=DELAYED if scheduled else WAITING, progress=0, attempts=0,
                next_attempt_at=send_at if scheduled else None,
                send_at=send_at if scheduled else None, created_at=now, updated_at=now,
                attachments=attachments or None, idempotency_key=idempotency_key,
                priority=priority)


# -- idempotent inserts -----------------------------------------------------------------------

def _insert_or_nothing(executor: Any, values: dict, dialect: str) -> bool:
    """INSERT the row unless its ``idempotency_key`` is taken; was it inserted?

    The unique index decides, never a read first: PostgreSQL and SQLite use ``INSERT ...
    ON CONFLICT (idempotency_key) DO NOTHING`` (on PostgreSQL it waits for a concurrent,
    uncommitted insert of the same key and does nothing if that one commits); other
    databases insert in a savepoint and roll the savepoint back on the unique violation,
    so the caller's transaction survives either way."""
    t = outbox_table
    if dialect in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = (insert(t).values(**values)
                .on_conflict_do_nothing(index_elements=[t.c.idempotency_key]).returning(t.c.id))
        return executor.execute(stmt).first() is not None
    try:
        with executor.begin_nested():
            executor.execute(t.insert().values(**values))
    except exc.IntegrityError:
        return False
    return True


def insert_once(executor: Any, values: dict, window: float, now: dt.datetime, *,
                dialect: str) -> Row | None:
    """Insert ``values`` (a row with an ``idempotency_key``) unless a job holds its key.

    Returns ``None`` when the row was inserted, else ``(id, message_id)`` of the job that
    holds the key. A key older than ``window`` seconds is released first (a conditional
    UPDATE clearing it, racing safely with other callers doing the same), so at most one
    job per key exists within any ``window`` (docs/design/mail.md). ``executor`` is a
    Session or Connection in the caller's transaction (READ COMMITTED); ``dialect`` its
    database's name (``"postgresql"``, ``"sqlite"``; anything else: a savepoint).
    """
    t, key = outbox_table, values["idempotency_key"]
    cutoff = now - dt.timedelta(seconds=window)
    for _round in range(5):
        if _insert_or_nothing(executor, values, dialect):
            return None
        holder = executor.execute(select(t.c.id, t.c.message_id, t.c.created_at)
                                  .where(t.c.idempotency_key == key)).first()
        if holder is None:  # released (or purged) since: insert again
            continue
        if as_utc(holder.created_at) >= cutoff:
            return holder
        executor.execute(update(t).where(t.c.id == holder.id, t.c.idempotency_key == key,
                                         t.c.created_at < cutoff)
                         .values(idempotency_key=None))
    raise RuntimeError(f"idempotency key {key!r}: no stable holder after 5 rounds")


def release_expired_keys(conn: Any, window: float, now: dt.datetime) -> int:
    """Clear the ``idempotency_key`` of rows created more than ``window`` s ago (the
    periodic purge): the key may be used again. Returns how many were cleared."""
    t = outbox_table
    stmt = (update(t).where(t.c.idempotency_key.is_not(None),
                            t.c.created_at < now - dt.timedelta(seconds=window))
            .values(idempotency_key=None))
    return conn.execute(stmt).rowcount


# -- the state machine, one conditional UPDATE per transition ---------------------------------

def claim(conn: Connection, job_id: str, lease: float, now: dt.datetime) -> Row | None:
    """Start an attempt: ``waiting``/due ``delayed``/lease-expired ``active`` -> ``active``.

    Returns the row (with ``attempts`` already counting this attempt) or ``None`` when the
    row is unknown, finished, or being worked on by someone else -- the caller then does
    nothing, which is what makes duplicate queue entries harmless.
    A scheduled row (``delayed`` with no attempt yet) is never claimed before its due time:
    no slack for it (an early queue entry is skipped; the relay pushes the row when due).
    """
    t = outbox_table
    claimable = or_(
        t.c.state == WAITING,
        and_(t.c.state == DELAYED, t.c.attempts == 0,
             or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at <= now)),
        and_(t.c.state == DELAYED, t.c.attempts > 0,
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
    """Where ``mail.max_age`` counts from: the last :func:`retry`, else the due time of a
    scheduled row, else the creation."""
    if row.retried_at is not None:
        return as_utc(row.retried_at)
    send_at = getattr(row, "send_at", None)
    created = as_utc(row.created_at)
    return max(created, as_utc(send_at)) if send_at is not None else created


def promote_statement(job_id: str, now: dt.datetime) -> Any:
    """A ``delayed`` row (scheduled, or waiting for a retry) to ``waiting`` and not yet
    pushed, so it is sent now (the admin page's "send now"); a due time still ahead becomes
    ``now``. Its attempts are kept; an older queue entry finds it taken and does nothing."""
    t = outbox_table
    return (update(t).where(t.c.id == job_id, t.c.state == DELAYED)
            .values(state=WAITING, progress=0, enqueued_at=None, next_attempt_at=None,
                    send_at=case((t.c.send_at > now, now), else_=t.c.send_at),
                    updated_at=now))


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
