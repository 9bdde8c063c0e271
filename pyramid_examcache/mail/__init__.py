"""The Huey-backed transactional mailer.

``config.include('pyramid_examcache.mail')`` (done by ``config.include('pyramid_examcache')``)
validates the ``mail.*`` settings, registers one :class:`~.queue.MailQueue` per application
and adds ``request.mailer`` (a :class:`~.mailer.Mailer`)::

    job = request.mailer.send_queued(to, subject, html, text=None, cc=None, bcc=None,
                                     reply_to=None, attachments=None, **headers)
                                            # ValueError: bad address, too large, no body
    job = request.mailer.send_queued(Message(...))   # pyramid_mailer's names; also
    request.mailer.send(message)            # pyramid_mailer's send / send_to_queue /
    request.mailer.send_immediately(message)  # send_immediately
    job.id                                  # known before the commit
    request.mailer.job_status(job.id)       # {'id', 'state', 'progress', 'attempts',
                                            #  'failedReason', 'nextAttemptAt',
                                            #  'failedRecipients', 'priority'}
    request.mailer.retry(job.id)            # a failed job sent again; False if unknown/not failed
    request.mailer.cancel(job.id)           # a waiting/delayed job -> failed ("cancelled by admin")
    request.mailer.promote(job.id)          # a delayed job (scheduled, or a retry) sent now
    request.mailer.send_queued(..., idempotency_key="k")  # one job per key within
                                            # mail.idempotency_window
    request.mailer.send_queued(..., send_at=aware_dt)  # or delay=seconds: 'delayed' until
    request.mailer.send_queued(..., priority="high")  # or "low"; mail.default_priority
    request.mailer.send_now(to, subject, html)

The request attribute is ``mail.request_attr`` (default ``mailer``): set it to another name
to include pyramid_mailer beside this mailer. :func:`get_mailer` works whatever the name.
Bodies from templates: ``html=pyramid.renderers.render('app:templates/mail/x.html.jinja2',
values, request=request)`` (any Pyramid renderer).

The outbox table lives in :mod:`.outbox`; the consumer is ``examcache-consumer CONFIG_URI``.
"""
from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from zope.interface import Interface

from ..settings import parse_mail_settings
from .attachments import Attachment
from .compose import Message
from .mailer import Mailer, MailJob
from .outbox import (
    add_new_columns,
    create_outbox,
    drop_new_columns,
    drop_outbox,
    metadata,
    outbox_table,
)
from .queue import MailQueue, build_huey, build_queue
from .transports import MailError, PermanentMailError, TransientMailError

__all__ = ["Attachment", "Message", "get_mailer", "IMailQueue", "IMailQueueFactory", "MailError",
           "add_new_columns", "drop_new_columns", "MailJob", "MailQueue", "Mailer",
           "PermanentMailError",
           "TransientMailError", "build_huey", "build_queue", "create_outbox", "drop_outbox",
           "get_mail_queue", "includeme", "metadata", "outbox_table"]


class IMailQueue(Interface):
    """Marker for the application's :class:`~.queue.MailQueue` utility."""


class IMailQueueFactory(Interface):
    """A ``factory(settings) -> MailQueue`` replacing the Huey-backed queue.

    ``pyramid_examcache.testing`` registers its in-process queue here; it is the only queue
    that takes ``mail.queue_url = memory://``."""


def get_mail_queue(registry: Any) -> MailQueue:
    """The application's :class:`~.queue.MailQueue` (after ``config.commit()``)."""
    queue = registry.queryUtility(IMailQueue)
    if queue is None:
        raise LookupError("pyramid_examcache.mail is not included in this application")
    return queue


def get_mailer(request: Any) -> Mailer:
    """The request's mailer (whatever ``mail.request_attr`` names it)."""
    return Mailer(request, get_mail_queue(request.registry))


def includeme(config: Configurator) -> None:
    """Register the mail queue and ``request.mailer``; settings are read when actions run.

    Bad values fail here already; whether ``memory://`` has a queue is known once every
    include ran (``pyramid_examcache.testing`` may come later), when the queue is built."""
    attr = parse_mail_settings(config.get_settings(), in_process=True).request_attr

    def register() -> None:
        factory = config.registry.queryUtility(IMailQueueFactory)
        settings = parse_mail_settings(config.registry.settings, in_process=factory is not None)
        queue = (factory or MailQueue)(settings)
        queue.resources.notify = config.registry.notify  # MailDelivered/MailFailed (.events)
        config.registry.registerUtility(queue, IMailQueue)

    config.action(("pyramid_examcache.mail", "queue"), register)
    config.add_request_method(get_mailer, attr, reify=True)
