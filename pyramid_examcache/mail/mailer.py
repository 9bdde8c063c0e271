"""``request.mailer``: queue mail in the request's transaction, send now, read job status."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

from pyramid_tm import is_tm_active
from sqlalchemy.engine import Engine
from transaction.interfaces import NoTransaction

from .message import build_message, check_address, make_message_id, recipients_list
from .outbox import new_row, outbox_table, utcnow
from .queue import MailQueue
from .relay import push_one
from .status import job_status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MailJob:
    """The handle of a queued mail: ``id`` is the job id (known before the commit)."""

    id: str
    message_id: str


class Mailer:
    """The per-request mailer (``request.mailer``)."""

    def __init__(self, request: Any, queue: MailQueue) -> None:
        self.request = request
        self.queue = queue
        self.settings = queue.settings

    @property
    def session(self) -> Any:
        """The request's SQLAlchemy session (``request.<mail.session_attr>``, default ``dbsession``)."""
        attr = self.settings.session_attr
        session = getattr(self.request, attr, None)
        if session is None:
            raise RuntimeError(f"request.{attr} is not set: the mailer writes its outbox through "
                               f"the request's SQLAlchemy session (setting mail.session_attr)")
        return session

    def send_queued(self, to: str | Iterable[str], subject: str, html: str,
                    text: str | None = None, **headers: str) -> MailJob:
        """Queue a mail for delivery once the request's transaction commits (M1, M2).

        Writes an outbox row through the request's session: it commits or aborts with the
        user's data. After a successful commit the row is pushed to the queue at once; if
        the broker is unreachable the row waits for the relay. Without an active pyramid_tm
        transaction the row is written and pushed immediately. ``to`` is an address or a
        list of them; ``headers`` become message headers (``reply_to`` -> ``Reply-To``),
        except ``sender``, which overrides ``mail.default_sender``. Returns a
        :class:`MailJob` whose ``id`` is the job id for :meth:`job_status`.
        """
        sender = headers.pop("sender", None) or self.settings.default_sender
        recipients = recipients_list(to)
        job_id = uuid.uuid4().hex
        message_id = make_message_id(job_id, sender)
        values = new_row(job_id, message_id, sender, recipients, subject, html, text,
                         headers, utcnow())
        session = self.session
        engine = _engine_of(session)
        txn = self._transaction()
        if txn is not None:
            session.execute(outbox_table.insert().values(**values))
            _mark_changed(session, self.request)
            txn.addAfterCommitHook(_after_commit, args=(self.queue, engine, job_id))
        else:
            with engine.begin() as conn:
                conn.execute(outbox_table.insert().values(**values))
            _after_commit(True, self.queue, engine, job_id)
        return MailJob(job_id, message_id)

    def send_now(self, to: str | Iterable[str], subject: str, html: str,
                 text: str | None = None, **headers: str) -> str:
        """Send synchronously through the configured transport; returns the Message-ID.

        No outbox row, no retries: raises :class:`~.transports.TransientMailError` or
        :class:`~.transports.PermanentMailError` on failure.
        """
        sender = headers.pop("sender", None) or self.settings.default_sender
        recipients = recipients_list(to)
        message_id = make_message_id(uuid.uuid4().hex, sender)
        message = build_message(sender=sender, recipients=recipients, subject=subject,
                                html=html, text=text, headers=headers, message_id=message_id)
        self.queue.transport.send(message, check_address(sender),
                                  [check_address(r) for r in recipients])
        return message_id

    def job_status(self, job_id: str) -> dict[str, Any] | None:
        """``{'id', 'state', 'progress', 'attempts', 'failedReason'}`` of a job, ``None`` if unknown."""
        return job_status(self.session, job_id)

    def _transaction(self) -> Any:
        if not is_tm_active(self.request):
            return None
        try:
            return self.request.tm.get()
        except NoTransaction:
            return None


def _engine_of(session: Any) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def _mark_changed(session: Any, request: Any) -> None:
    """A Core insert through the session is not seen by zope.sqlalchemy: say it was a write."""
    try:
        from zope.sqlalchemy import mark_changed
    except ImportError:  # pragma: no cover -- zope.sqlalchemy is a dependency
        return
    mark_changed(session, transaction_manager=request.tm)


def _after_commit(status: bool, queue: MailQueue, engine: Engine, job_id: str) -> None:
    if not status:
        return
    if queue.immediate:
        queue.use_engine(engine)
    try:
        push_one(engine, queue, job_id)
    except Exception:  # noqa: BLE001 -- never fail a committed request; the relay catches up
        log.exception("mail %s: after-commit push failed; the relay will retry", job_id)
