"""Job status (M4, docs/design/mail.md): read from the outbox row, and its retention.

``state``: ``waiting`` (committed, queued or about to be), ``active`` (an attempt is
running), ``delayed`` (a transient failure; the next attempt is scheduled), ``completed``,
``failed``. ``progress``: 0 while waiting/delayed, 10 while active, 100 when finished.
``attempts``: delivery attempts started. ``nextAttemptAt``: when a ``delayed`` job is
retried, or sent if it is scheduled (``send_at``/``delay``: ``delayed`` with no attempt
yet) (ISO 8601, UTC), else ``None``. ``failedRecipients``: ``{address: SMTP reply}`` of
recipients the server refused (``None`` if none). ``priority``: ``high``, ``normal`` or
``low`` (:mod:`.priority`). Finished rows are deleted by the periodic purge
after ``mail.keep_completed`` / ``mail.keep_failed`` seconds.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.engine import Row

from .outbox import COMPLETED, DELAYED, FAILED, as_utc, outbox_table, release_expired_keys
from .priority import priority_name

#: job ids are uuid4 hex; accept any short token of safe characters
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_job_id(value: Any) -> bool:
    """Could ``value`` be a job id we issue? (Anything else names no job; NUL bytes and the
    like never reach the database.)"""
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None

_COLUMNS = (outbox_table.c.id, outbox_table.c.state, outbox_table.c.progress,
            outbox_table.c.attempts, outbox_table.c.failed_reason,
            outbox_table.c.next_attempt_at, outbox_table.c.failed_recipients,
            outbox_table.c.priority)


def status_of(row: Row) -> dict[str, Any]:
    """``{'id', 'state', 'progress', 'attempts', 'failedReason', 'nextAttemptAt',
    'failedRecipients', 'priority'}`` of an outbox row."""
    next_at = as_utc(row.next_attempt_at) if row.state == DELAYED else None
    return {"id": row.id, "state": row.state, "progress": row.progress,
            "attempts": row.attempts, "failedReason": row.failed_reason,
            "nextAttemptAt": next_at.isoformat() if next_at is not None else None,
            "failedRecipients": row.failed_recipients or None,
            "priority": priority_name(getattr(row, "priority", None))}


def job_status(executor: Any, job_id: str) -> dict[str, Any] | None:
    """The status of ``job_id`` read through ``executor`` (a Session or Connection), or ``None``.

    ``failedReason`` is the last failure: the reason of a ``failed`` job, or of the last
    transient failure of a ``delayed`` one; ``None`` once ``completed``.
    """
    if not is_job_id(job_id):
        return None
    row = executor.execute(select(*_COLUMNS).where(outbox_table.c.id == job_id)).first()
    return status_of(row) if row is not None else None


def purge_finished(conn: Any, keep_completed: float, keep_failed: float,
                   now: dt.datetime, idempotency_window: float | None = None) -> int:
    """Delete completed rows older than ``keep_completed`` s, failed ones older than
    ``keep_failed`` s.

    With ``idempotency_window`` (``mail.idempotency_window``) the idempotency keys of rows
    created longer ago are released first, and a row still holding its key is kept: the
    job a key names outlives its window, so a repeated send within it finds the job (and
    its status) rather than queueing the mail again."""
    t = outbox_table
    where = [or_(
        and_(t.c.state == COMPLETED, t.c.finished_at < now - dt.timedelta(seconds=keep_completed)),
        and_(t.c.state == FAILED, t.c.finished_at < now - dt.timedelta(seconds=keep_failed)),
    )]
    if idempotency_window is not None:
        release_expired_keys(conn, idempotency_window, now)
        where.append(t.c.idempotency_key.is_(None))
    return conn.execute(delete(t).where(*where)).rowcount
