"""``request.mailer``: queue mail in the request's transaction, send now, read job status.

Where an outbox write goes is decided by ``Mailer._transaction``, from the request's
transaction manager itself (``request.tm.get()``), never from pyramid_tm's ``tm.active``
flag (removed before the commit, and never set in ``bootstrap()`` scripts or pshell):

* a transaction is open -- the row is written through the request's session and commits
  or aborts with it; the transaction's bridge (:mod:`pyramid_examcache.transaction`)
  pushes it once the transaction has committed, never if it does not (M1);
* none (no pyramid_tm, or an explicit manager with no ``begin()``) -- the row is written
  and committed at once in a short transaction of its own on the outbox database, then
  pushed, before the job id is returned (M2: never an id without a row).
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine

from ..trace import trace_of
from ..transaction import bridge_of, open_transaction
from .attachments import store, stored_size
from .compose import is_message, message_arguments
from .message import (
    address_list,
    build_message,
    check_address,
    envelope_recipients,
    header_name,
    make_message_id,
    make_recipients,
    validate_address,
)
from .outbox import (
    CANCELLED_REASON,
    FAILED,
    MAX_KEY_LENGTH,
    cancel_statement,
    insert_once,
    new_row,
    outbox_table,
    promote_statement,
    retry_values,
    utcnow,
)
from .priority import priority_value
from .queue import MailQueue
from .status import is_job_id, job_status
from .transports import MailError

#: headers that only the mailer writes (addresses are arguments, ids and dates are ours)
_RESERVED_HEADERS = frozenset({"From", "To", "Cc", "Bcc", "Message-Id", "Date", "Sender"})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Draft:
    """A validated mail, ready for the outbox row or the transport."""

    sender: str
    recipients: dict[str, list[str]]
    subject: str
    html: str
    text: str | None
    headers: dict[str, str]
    attachments: list[dict]


def _no_controls(text: str, what: str) -> str:
    if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in text):
        raise ValueError(f"{what} contains a control character or line break")
    return text


@dataclass(frozen=True)
class MailJob:
    """The handle of a queued mail: ``id`` is the job id (known before the commit).

    ``duplicate`` is true when the ``idempotency_key`` was already held by a job within
    ``mail.idempotency_window``: ``id`` is that job's, and nothing was queued."""

    id: str
    message_id: str
    duplicate: bool = False


def _idempotency_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key:
        raise TypeError("idempotency_key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"idempotency_key is longer than {MAX_KEY_LENGTH} characters")
    return _no_controls(key, "idempotency_key")


def _due_time(send_at: Any, delay: Any, now: dt.datetime) -> dt.datetime | None:
    """When a mail given ``send_at`` (an aware datetime) or ``delay`` (seconds or a
    timedelta) is due, in UTC; ``None`` for neither."""
    if send_at is not None and delay is not None:
        raise TypeError("give send_at or delay, not both")
    if delay is not None:
        if isinstance(delay, dt.timedelta):
            delay = delay.total_seconds()
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise TypeError("delay must be a number of seconds or a timedelta")
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"delay must be a finite number of seconds >= 0, not {delay!r}")
        return now + dt.timedelta(seconds=delay)
    if send_at is None:
        return None
    if not isinstance(send_at, dt.datetime):
        raise TypeError("send_at must be a datetime")
    if send_at.tzinfo is None or send_at.utcoffset() is None:
        raise ValueError("send_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return send_at.astimezone(dt.UTC)


class Mailer:
    """The per-request mailer (``request.mailer``)."""

    def __init__(self, request: Any, queue: MailQueue) -> None:
        self.request = request
        self.queue = queue
        self.settings = queue.settings

    @property
    def session(self) -> Any:
        """The request's SQLAlchemy session (``request.<mail.session_attr>``, default
        ``dbsession``)."""
        attr = self.settings.session_attr
        session = getattr(self.request, attr, None)
        if session is None:
            raise RuntimeError(f"request.{attr} is not set: the mailer writes its outbox through "
                               f"the request's SQLAlchemy session (setting mail.session_attr)")
        return session

    def _compose(self, to: Any, subject: Any, html: Any, text: Any, cc: Any, bcc: Any,
                 reply_to: Any, attachments: Any, headers: dict[str, Any]) -> Draft:
        """Validate everything a mail is made of, in the caller (never first in the consumer)."""
        if is_message(to):
            if any(v is not None for v in (subject, html, text, cc, bcc, reply_to, attachments)) \
                    or headers:
                raise TypeError("give either a Message or the mail's fields, not both")
            fields = message_arguments(to)
            headers = fields.pop("headers")
            if "sender" in fields:
                headers["sender"] = fields.pop("sender")
            return self._compose(**fields, headers=headers)
        smtputf8 = self.settings.smtputf8
        sender = headers.pop("sender", None) or self.settings.default_sender
        sender = validate_address(sender, "sender", smtputf8=smtputf8)[0]
        recipients = make_recipients(to, cc, bcc, smtputf8=smtputf8)
        reply_to = headers.pop("reply_to", None) if reply_to is None else reply_to
        if reply_to is not None:
            pairs = address_list(reply_to, "reply_to", smtputf8=smtputf8)
            if pairs:
                headers["Reply-To"] = ", ".join(header for header, _bare in pairs)
        clean: dict[str, str] = {}
        for key, value in headers.items():
            name = header_name(key)
            if name in _RESERVED_HEADERS:
                raise ValueError(f"header {name} cannot be set through **headers; use the "
                                 f"to/cc/bcc/sender arguments")
            clean[name] = _no_controls(str(value), f"header {name}")
        subject = _no_controls("" if subject is None else str(subject), "subject")
        if html is None and text is None:
            raise ValueError("a mail needs a body: html, text (or both)")
        html = "" if html is None else str(html)
        stored = store(attachments)
        size = len(html.encode()) + len((text or "").encode()) + stored_size(stored)
        if size > self.settings.max_message_bytes:
            raise ValueError(f"mail too large: {size} bytes of bodies and attachments, more than "
                             f"mail.max_message_bytes ({self.settings.max_message_bytes})")
        return Draft(sender, recipients, subject, html, text, clean, stored)

    def send_queued(self, to: Any, subject: str | None = None, html: str | None = None,
                    text: str | None = None, cc: str | Iterable[str] | None = None,
                    bcc: str | Iterable[str] | None = None,
                    reply_to: str | Iterable[str] | None = None,
                    attachments: Iterable[Any] | None = None, *,
                    idempotency_key: str | None = None, send_at: dt.datetime | None = None,
                    delay: float | dt.timedelta | None = None, priority: str | None = None,
                    **headers: str) -> MailJob:
        """Queue a mail for delivery once the caller's transaction commits (M1, M2).

        ``send_queued(message)`` takes a :class:`~.compose.Message` (pyramid_mailer's names;
        pyramid_mailer's own ``Message`` works too); or give the fields:

        Inside a transaction of ``request.tm`` (a pyramid_tm request, or ``with
        request.tm:`` in a ``bootstrap()`` script or pshell) the outbox row is written
        through the request's session (``mail.session_attr``): it commits or aborts with
        the user's data and is pushed to the queue right after the commit. Without one
        (no pyramid_tm, or an explicit manager with no transaction begun) the row is
        committed at once in its own transaction on the outbox database and pushed before
        this returns: a later rollback of the caller's work does not take it back. If the
        broker is unreachable the row waits for the relay.

        ``to``, ``cc``, ``bcc`` and ``reply_to`` are an address (``'a@b.c'`` or
        ``'Name <a@b.c>'``), a comma-separated string or a list. They are validated here:
        a bad address raises :class:`ValueError` naming the field (control characters,
        RFC 2047 encoded words, non-ASCII addresses unless ``mail.smtputf8``). An address
        given twice is kept once (first of to, cc, bcc). ``bcc`` recipients get the mail
        but never appear in its headers. ``html`` and/or ``text`` are the bodies (the text
        part is derived from the HTML when missing). ``attachments`` are
        :class:`~.attachments.Attachment` objects, stored with the row; the whole mail is
        limited to ``mail.max_message_bytes`` (:class:`ValueError` beyond). Other
        ``headers`` become message headers (``x_mailer`` -> ``X-Mailer``), except
        ``sender``, which overrides ``mail.default_sender``. Returns a :class:`MailJob`
        whose ``id`` is the job id.

        ``idempotency_key``: one job per key within ``mail.idempotency_window`` (a unique
        index decides); a repeat returns the first job (``duplicate``) and queues nothing.
        ``send_at`` (an aware datetime) or ``delay`` (seconds, a timedelta): ``delayed``
        with ``nextAttemptAt`` until then, never sent earlier (docs/design/mail.md).
        ``priority``: ``'high'``, ``'normal'`` or ``'low'`` (default ``mail.default_priority``).
        """
        rank = priority_value(priority, self.settings.default_priority)
        draft = self._compose(to, subject, html, text, cc, bcc, reply_to, attachments, headers)
        key = _idempotency_key(idempotency_key)
        now = utcnow()
        due = _due_time(send_at, delay, now)
        job_id = uuid.uuid4().hex
        message_id = make_message_id(job_id, draft.sender)
        values = new_row(job_id, message_id, draft.sender, draft.recipients, draft.subject,
                         draft.html, draft.text, draft.headers, now, draft.attachments,
                         idempotency_key=key, send_at=due, priority=rank)
        if key is None:
            self._write_then_push(outbox_table.insert().values(**values), job_id, check=False)
        else:
            holder = self._insert_once(values, now)
            if holder is not None:
                return MailJob(holder.id, holder.message_id, duplicate=True)
        self._trace(job_id, message_id, draft)
        return MailJob(job_id, message_id)

    def _trace(self, job_id: str, message_id: str, draft: Draft) -> None:
        trace = trace_of(self.request)
        if trace is not None:  # the debug toolbar's panel
            trace.mails.append({"job_id": job_id, "message_id": message_id,
                                "to": draft.recipients["to"], "subject": draft.subject,
                                "attachments": len(draft.attachments)})

    def send(self, message: Any, *, idempotency_key: str | None = None,
             send_at: dt.datetime | None = None,
             delay: float | dt.timedelta | None = None, priority: str | None = None) -> MailJob:
        """pyramid_mailer's ``send(message)``: queued, sent after the commit (= :meth:`send_queued`,
        with its ``idempotency_key``, ``send_at``, ``delay`` and ``priority``)."""
        return self.send_queued(message, idempotency_key=idempotency_key, send_at=send_at,
                                delay=delay, priority=priority)

    send_to_queue = send

    def retry(self, job_id: str) -> bool:
        """Send a ``failed`` job again: back to ``waiting`` with the same Message-ID.

        Its ``attempts`` restart from 0 (the fast retries run again) and ``mail.max_age``
        counts from now; ``failedReason`` keeps the last error until the next attempt ends.
        Like :meth:`send_queued` it joins the request's transaction (or, without one, is
        committed at once) and is pushed after the commit. Returns ``False`` (and changes
        nothing) when the job is unknown (or was purged) or is not ``failed``.
        """
        if not is_job_id(job_id):
            return False
        t = outbox_table
        stmt = update(t).where(t.c.id == job_id, t.c.state == FAILED).values(
            **retry_values(utcnow()))
        return self._write_then_push(stmt, job_id)

    def promote(self, job_id: str) -> bool:
        """Send a ``delayed`` job now: a scheduled mail before its time, or a retry before
        its ``nextAttemptAt`` (the admin page's "send now"). The job is ``waiting`` again and
        pushed after the commit (like :meth:`retry`; its attempts are kept). Returns
        ``False`` (and changes nothing) when the job is unknown or not ``delayed``.
        """
        if not is_job_id(job_id):
            return False
        return self._write_then_push(promote_statement(job_id, utcnow()), job_id)

    def cancel(self, job_id: str, reason: str = CANCELLED_REASON) -> bool:
        """Cancel a ``waiting`` or ``delayed`` job: ``failed`` with ``reason`` (default
        ``"cancelled by admin"``), so nothing more is sent and :meth:`retry` can revive it.

        Written through the session, in the caller's transaction (a rollback cancels
        nothing); without one, committed at once. Returns ``False`` (and changes nothing)
        when the job is unknown, already ``active`` (an attempt is running: it is not
        interrupted) or finished.
        """
        if not is_job_id(job_id):
            return False
        stmt = cancel_statement(job_id, utcnow(), reason)
        return self._write(stmt, self._transaction()) is not None

    def _write(self, stmt: Any, txn: Any, *, check: bool = True) -> Engine | None:
        """Run one outbox write in ``txn`` (through the session) or, when ``None``, in a
        short transaction of its own; the engine of the outbox it went to, or ``None`` when
        ``check`` finds it matched no row (an UPDATE of an unknown job: nothing changed).
        An INSERT is not checked (its rowcount may be -1 with implicit RETURNING)."""
        if txn is None:  # nobody would commit the session: commit it ourselves, now
            engine = self._outbox_engine()
            with engine.begin() as conn:
                matched = conn.execute(stmt).rowcount == 1 or not check
            return engine if matched else None
        session = self.session
        if session.execute(stmt).rowcount != 1 and check:
            return None
        _mark_changed(session, self.request)
        return _engine_of(session)

    def _insert_once(self, values: dict, now: dt.datetime) -> Any:
        """Insert a row holding an idempotency key (:func:`.outbox.insert_once`), pushed
        after the commit; ``None``, or the ``(id, message_id)`` of the job holding the key."""
        txn, window = self._transaction(), self.settings.idempotency_window
        if txn is None:  # committed at once, then pushed
            engine = self._outbox_engine()
            with engine.begin() as conn:
                holder = insert_once(conn, values, window, now, dialect=engine.dialect.name)
            if holder is None:
                _push(self.queue, engine, values["id"])
            return holder
        session = self.session
        engine = _engine_of(session)
        holder = insert_once(session, values, window, now, dialect=engine.dialect.name)
        _mark_changed(session, self.request)
        bridge = bridge_of(txn)
        if holder is None and bridge is not None:
            _push_on_commit(bridge, self.queue, engine, values["id"])
        return holder

    def _write_then_push(self, stmt: Any, job_id: str, *, check: bool = True) -> bool:
        txn = self._transaction()
        engine = self._write(stmt, txn, check=check)
        if engine is None:
            return False
        if txn is None:  # committed already
            _push(self.queue, engine, job_id)
            return True
        bridge = bridge_of(txn)
        if bridge is not None:  # (None: the transaction is over; the relay pushes a committed row)
            _push_on_commit(bridge, self.queue, engine, job_id)
        return True

    def send_now(self, to: Any, subject: str | None = None, html: str | None = None,
                 text: str | None = None, cc: str | Iterable[str] | None = None,
                 bcc: str | Iterable[str] | None = None,
                 reply_to: str | Iterable[str] | None = None,
                 attachments: Iterable[Any] | None = None, **headers: str) -> str:
        """Send synchronously through the configured transport; returns the Message-ID.

        Same arguments (or a Message) and validation as :meth:`send_queued`. No outbox row,
        no retries: raises :class:`~.transports.TransientMailError` or
        :class:`~.transports.PermanentMailError` on failure.
        """
        draft = self._compose(to, subject, html, text, cc, bcc, reply_to, attachments, headers)
        message_id = make_message_id(uuid.uuid4().hex, draft.sender)
        message = build_message(sender=draft.sender, recipients=draft.recipients,
                                subject=draft.subject, html=draft.html, text=draft.text,
                                headers=draft.headers, message_id=message_id,
                                attachments=draft.attachments)
        self.queue.transport.send(message, check_address(draft.sender),
                                  envelope_recipients(draft.recipients))
        return message_id

    def send_immediately(self, message: Any, fail_silently: bool = False) -> str | None:
        """pyramid_mailer's ``send_immediately``: :meth:`send_now`; ``fail_silently``
        returns ``None`` instead of raising a delivery error (bad input still raises)."""
        try:  # a bad message raises ValueError (not a MailError): never silenced
            return self.send_now(message)
        except MailError:
            if not fail_silently:
                raise
            log.warning("send_immediately failed (fail_silently)", exc_info=True)
            return None

    def job_status(self, job_id: str) -> dict[str, Any] | None:
        """``{'id', 'state', 'progress', 'attempts', 'failedReason', 'nextAttemptAt',
        'failedRecipients', 'priority'}`` of a job, ``None`` if unknown.

        Read through the request's session inside its transaction (a job queued in it is
        seen as ``waiting``), else on a connection of its own (pshell, scripts).
        """
        if self._transaction() is not None:
            return job_status(self.session, job_id)
        with self._outbox_engine().connect() as conn:
            return job_status(conn, job_id)

    def _transaction(self) -> Any:
        """The open transaction of the request's manager (``request.tm``), or ``None``.

        ``None`` without pyramid_tm (no ``request.tm``) or when the manager is explicit
        (pyramid_tm's ``explicit_manager``) and no transaction was begun. A non-explicit
        manager (``transaction.manager``) always has one: writes join it like the
        session's, so commit it (``with request.tm:`` or ``request.tm.commit()``).
        """
        return open_transaction(self.request, begin=True)

    def _outbox_engine(self) -> Engine:
        """Where the outbox is outside a transaction: the session's database (as inside
        one), else the queue's (``mail.outbox_url`` / ``sqlalchemy.url``)."""
        session = getattr(self.request, self.settings.session_attr, None)
        return _engine_of(session) if session is not None else self.queue.engine


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


class _PushBatch:
    """The jobs one transaction queued on one outbox, pushed together after its commit."""

    def __init__(self, queue: MailQueue, engine: Engine) -> None:
        self.queue, self.engine = queue, engine
        self.job_ids: list[str] = []

    def __call__(self) -> None:
        if len(self.job_ids) == 1:
            _push(self.queue, self.engine, self.job_ids[0])
            return
        self.queue.resources.use_engine(self.engine)
        try:
            self.queue.push_many(self.engine, self.job_ids)
        except Exception:  # noqa: BLE001 -- never fail a committed request; the relay catches up
            log.exception("%d mails: after-commit push failed; the relay will retry",
                          len(self.job_ids))


def _push_on_commit(bridge: Any, queue: MailQueue, engine: Engine, job_id: str) -> None:
    """Push ``job_id`` once the transaction of ``bridge`` has committed, with the other jobs
    it queued (one claim per 500 rows, :func:`.relay.push_many`, not one per row). A batch
    that a savepoint's rollback dropped is not reused (its jobs' rows are gone too)."""
    batch = next((fn for fn, _args in reversed(bridge.calls)
                  if isinstance(fn, _PushBatch) and fn.queue is queue and fn.engine is engine),
                 None)
    if batch is None:
        batch = _PushBatch(queue, engine)
        bridge.on_commit(batch)
    batch.job_ids.append(job_id)


def _push(queue: MailQueue, engine: Engine, job_id: str) -> None:
    """After the commit: hand the committed row to the queue."""
    queue.resources.use_engine(engine)  # the outbox is where the session wrote it
    try:
        queue.push(engine, job_id)
    except Exception:  # noqa: BLE001 -- never fail a committed request; the relay catches up
        log.exception("mail %s: after-commit push failed; the relay will retry", job_id)
