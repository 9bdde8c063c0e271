"""The Huey tasks: deliver one job, relay the outbox, purge finished jobs.

``deliver`` updates the outbox row itself (the durable job status, M4 in
docs/design/mail.md) and decides on retries from the row's ``attempts`` -- which
survive consumer restarts -- rather than from Huey's in-message counter: a transient
failure on attempt *n* (n <= ``mail.retries``) marks the row ``delayed`` and
re-schedules the task after ``retry_delay * retry_backoff ** (n - 1)`` seconds (2, 4,
8 s by default) with :class:`huey.exceptions.RetryTask`; later transient failures keep
it ``delayed`` with a ``next_attempt_at`` (backoff capped at ``mail.max_retry_delay``)
that the periodic relay honours, until ``mail.max_age``; a permanent failure marks it
``failed`` at once (M3, same page). Huey's own ``retries``/``retry_delay``/
``retry_backoff`` (same settings) cover unexpected errors such as the database being
briefly unreachable.

``relay`` and ``purge`` are periodic tasks that run on every periodic check of the
scheduler: every ``mail.relay_interval`` seconds under ``examcache-consumer`` (every minute
under a stock Huey consumer).
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from huey.exceptions import RetryTask
from huey.signals import SIGNAL_INTERRUPTED

from . import outbox
from .events import MailDelivered, MailFailed, MailJobInfo
from .message import build_message, check_address, envelope_recipients
from .outbox import COMPLETED, DELAYED, FAILED
from .priority import PERIODIC
from .ratelimit import SendLimiter, build_limiter
from .relay import Broker, push_one, relay
from .status import purge_finished
from .throttle import end_slot, take_slot
from .transports import Transport, classify

log = logging.getLogger(__name__)

DELIVER = "examcache.mail.deliver"
RELAY = "examcache.mail.relay"
PURGE = "examcache.mail.purge"

#: what an attempt did: the row's new state (outbox.COMPLETED, DELAYED, FAILED) or SKIPPED
SKIPPED = "skipped"


class Resources(Protocol):
    """What a delivery needs besides its job id (:class:`~.queue.Resources`)."""

    @property
    def engine(self) -> Any: ...

    @property
    def transport(self) -> Transport: ...


class MailTasks(NamedTuple):
    deliver: Any
    relay: Any
    purge: Any
    broker: Broker  #: pushes ``deliver`` for a job id


def _every_check(timestamp: dt.datetime) -> bool:
    return True


def retry_delay(settings: Any, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based):
    ``retry_delay * retry_backoff ** (attempt - 1)``, capped at ``mail.max_retry_delay``."""
    exponent = min(attempt - 1, 64)  # no float overflow for very old rows
    return min(settings.retry_delay * settings.retry_backoff ** exponent, settings.max_retry_delay)


#: ``observer(outcome, row, reason)``: told of every attempt's outcome (metrics)
Observer = Callable[[str, Any, "str | None"], None]


def _quiet(outcome: str, row: Any, reason: str | None) -> None:
    pass


def notify(resources: Any, event: Any) -> None:
    """Hand ``event`` to ``resources.notify`` (the registry's ``notify``) when there is one;
    a subscriber's exception is logged, never raised: the row is already final."""
    send = getattr(resources, "notify", None)
    if send is None:
        return
    try:
        send(event)
    except Exception:  # noqa: BLE001 -- the outcome is recorded; a hook cannot undo it
        log.exception("mail %s: a subscriber of %s failed", event.job.id, type(event).__name__)


def deliver_job(settings: Any, resources: Resources, job_id: str,
                observer: Observer = _quiet, limiter: SendLimiter | None = None) -> str:
    """One delivery attempt of ``job_id``; returns what happened (raises RetryTask on a fast retry).

    Two phases after a transient failure on attempt ``n`` (M3, docs/design/mail.md): while
    ``n <= mail.retries`` the row is ``delayed`` and Huey re-runs the task after
    :func:`retry_delay` (the fast phase: 2, 4, 8 s). After that the row stays ``delayed``
    with ``next_attempt_at`` and *no* broker entry: the periodic relay pushes it when due
    (the outbox row is the only copy of a long wait). Once ``mail.max_age`` has passed since
    the mail was queued (or re-sent by :meth:`Mailer.retry`) a transient failure is final;
    the last attempt is scheduled at that deadline at the latest. Permanent failures fail
    at once. With a ``limiter`` (``mail.rate_limit``) the send waits for a slot: a job
    refused one is held back, not failed, its attempt not counted (:mod:`.throttle`).
    """
    engine = resources.engine
    with engine.begin() as conn:
        row = outbox.claim(conn, job_id, settings.lease, outbox.utcnow())
    if row is None:
        log.info("mail %s: nothing to do (unknown, finished or in progress elsewhere)", job_id)
        return SKIPPED
    attempt = row.attempts
    deadline = outbox.started_at(row) + dt.timedelta(seconds=settings.max_age)
    if attempt > 1 and outbox.utcnow() > deadline + dt.timedelta(seconds=settings.lease):
        # earlier attempts died mid-send (consumer killed) until the mail got too old
        reason = f"gave up after {attempt - 1} attempts (mail.max_age)"
        if row.failed_reason:
            reason = f"{reason}: {row.failed_reason}"
        with engine.begin() as conn:
            done = outbox.mark_failed(conn, job_id, attempt, reason, outbox.utcnow())
        observer(FAILED, row, reason)
        if done:
            notify(resources, MailFailed(MailJobInfo.from_row(row), reason, expired=True))
        return FAILED
    refused: dict[str, str] = {}
    slot = take_slot(engine, limiter, row)  # raises RetryTask when throttled
    if slot is False:
        return SKIPPED
    try:
        message = build_message(sender=row.sender, recipients=row.recipients,
                                subject=row.subject, html=row.html, text=row.text,
                                headers=row.headers, message_id=row.message_id,
                                attachments=row.attachments)
        refused = resources.transport.send(message, check_address(row.sender),
                                           envelope_recipients(row.recipients)) or {}
    except Exception as exc:  # noqa: BLE001 -- classified by _attempt_failed
        end_slot(slot)
        return _attempt_failed(settings, resources, job_id, row, deadline, exc, observer)
    end_slot(slot)
    with engine.begin() as conn:
        done = outbox.mark_completed(conn, job_id, attempt, outbox.utcnow(), refused)
    if refused:
        log.warning("mail %s delivered, but refused for %s", job_id, ", ".join(refused))
    log.info("mail %s delivered (attempt %d, %s)", job_id, attempt, row.message_id)
    observer(COMPLETED, row, None)
    if done:
        notify(resources, MailDelivered(MailJobInfo.from_row(row), dict(refused)))
    return COMPLETED


def _attempt_failed(settings: Any, resources: Resources, job_id: str, row: Any,
                    deadline: dt.datetime, exc: Exception, observer: Observer) -> str:
    """Record the failed attempt ``row.attempts`` of the claimed ``row``: ``delayed`` (a
    transient failure before ``deadline``; raises RetryTask in the fast phase) or ``failed``."""
    attempt, engine = row.attempts, resources.engine
    error = classify(exc)
    now = outbox.utcnow()
    if error.transient and now < deadline:
        delay = retry_delay(settings, attempt)
        next_at = min(now + dt.timedelta(seconds=delay), deadline)
        with engine.begin() as conn:
            outbox.mark_delayed(conn, job_id, attempt, str(error), next_at, now,
                                getattr(error, "refused", None))
        if attempt <= settings.retries:  # the fast phase: Huey holds the short wait
            log.warning("mail %s attempt %d failed (%s); retrying in %.1fs",
                        job_id, attempt, error, delay)
            observer(DELAYED, row, str(error))
            raise RetryTask(f"transient failure: {error}", delay=delay) from exc
        log.warning("mail %s attempt %d failed (%s); next attempt at %s (by the relay)",
                    job_id, attempt, error, next_at.isoformat())
        observer(DELAYED, row, str(error))
        return DELAYED
    if error.transient:
        reason = f"gave up after {attempt} attempts (mail.max_age): {error}"
    else:
        reason = str(error)
    log.error("mail %s failed on attempt %d: %s", job_id, attempt, reason)
    with engine.begin() as conn:
        done = outbox.mark_failed(conn, job_id, attempt, reason, now,
                                  getattr(error, "refused", None))
    observer(FAILED, row, reason)
    if done:
        notify(resources, MailFailed(MailJobInfo.from_row(row), reason, expired=error.transient,
                                     refused=dict(error.refused)))
    return FAILED


def register_tasks(huey: Any, settings: Any, resources: Resources,
                   broker_factory: Callable[[Any], Broker],
                   observer: Observer = _quiet) -> MailTasks:
    """Register the mail tasks (and the interrupted-task handler) on ``huey``.

    ``observer`` is told of every attempt's outcome (the consumer's metrics).
    ``broker_factory(deliver)`` makes the broker that pushes the ``deliver`` task (the
    relay task pushes through it too).
    """

    @huey.task(retries=settings.retries, retry_delay=settings.retry_delay,
               retry_backoff=settings.retry_backoff, name=DELIVER)
    def deliver(job_id: str) -> str:
        return deliver_job(settings, resources, job_id, observer, limiter)

    limiter = build_limiter(settings, huey)  # mail.rate_limit (None: no limit)

    broker = broker_factory(deliver)
    # the relay and the purge go before queued mail (a backlog must not hold up the relay)
    periodic = PERIODIC if getattr(huey.storage, "priority", False) else None

    @huey.periodic_task(_every_check, priority=periodic, name=RELAY)
    def relay_outbox() -> int:
        return relay(resources.engine, broker, settings)

    @huey.periodic_task(_every_check, priority=periodic, name=PURGE)
    def purge_outbox() -> int:
        with resources.engine.begin() as conn:
            return purge_finished(conn, settings.keep_completed, settings.keep_failed,
                                  outbox.utcnow(), settings.idempotency_window)

    @huey.signal(SIGNAL_INTERRUPTED)
    def requeue_interrupted(signal: str, task: Any, *args: Any) -> None:
        """A task cut off by shutdown: give its row back and push it again (or leave it to
        the relay)."""
        if task.name != deliver.name or not task.args:
            return
        job_id = task.args[0]
        with resources.engine.begin() as conn:
            released = outbox.release(conn, job_id, outbox.utcnow())
        if released:
            push_one(resources.engine, broker, job_id)
            log.warning("mail %s interrupted by shutdown; re-queued", job_id)

    return MailTasks(deliver, relay_outbox, purge_outbox, broker)
