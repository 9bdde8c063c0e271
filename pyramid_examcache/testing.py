"""Test helpers for applications that use ``pyramid_examcache`` (the DummyMailer idea).

Make queued mail run in-process and capture it instead of sending it::

    config = Configurator(settings=settings)
    config.include('pyramid_tm')
    config.include('pyramid_examcache')
    config.include('pyramid_examcache.testing')   # any order, before the app is made
    app = config.make_wsgi_app()

(``mail_testing_settings()`` returns the settings it sets:
``{'mail.queue_url': 'memory://', 'mail.transport': 'memory'}``).

Like ``pyramid_mailer.testing`` (which registers a DummyMailer), the include registers a
replacement part: the in-process mail queue (:class:`InProcessMailQueue`), the only queue
that takes ``mail.queue_url = memory://`` (without this include that setting is a
ConfigurationError). ``request.mailer.send_queued(...)`` still writes the outbox row in the
request's transaction (so an aborted request sends nothing); the queue is a Huey
``MemoryHuey`` and what is pushed to it is run in the pushing thread right after the push's
claim committed, as a consumer would run it. With ``mail.transport = memory`` the message is
kept in memory: ``get_mail_capture(x)`` returns the capture, where ``x`` is the
registry, a request, the WSGI app (router) or a WebTest ``TestApp``::

    from pyramid_examcache.testing import get_mail_capture

    res = testapp.post_json('/api/auth/register', {...})
    capture = get_mail_capture(testapp)
    mail = capture.last                     # or capture.outbox[-1]
    mail.to, mail.subject, mail.html, mail.text, mail.message_id, mail.job_id, mail.headers
    capture.clear()

The outbox table must exist in the test database (``metadata.create_all(engine)`` with
:data:`pyramid_examcache.mail.outbox.metadata`, or your Alembic migration). Retries are not
run in-process (a transient failure leaves the job ``delayed``); the memory transport
never fails.
"""
from __future__ import annotations

import logging
from typing import Any

from huey import MemoryHuey
from huey.exceptions import RetryTask
from pyramid.config import Configurator
from sqlalchemy.engine import Engine

from .mail import IMailQueueFactory, get_mail_queue
from .mail.queue import MailQueue
from .mail.transports import CapturedMail, MemoryTransport
from .settings import MailSettings

__all__ = ["CapturedMail", "InProcessMailQueue", "MemoryTransport", "get_mail_capture",
           "includeme", "mail_testing_settings"]

log = logging.getLogger(__name__)


class InProcessMailQueue(MailQueue):
    """The test mode's mail queue: a ``MemoryHuey`` whose pushed deliveries run in-process.

    :meth:`push` (the after-commit step) and :meth:`enqueue` run what was pushed at once,
    after the claim that pushed it committed. Fast retries are not run: a transient failure
    leaves the job ``delayed``.
    """

    def __init__(self, settings: MailSettings, **kwargs: Any) -> None:
        kwargs.setdefault("huey", MemoryHuey(settings.queue_name, results=False))
        super().__init__(settings, **kwargs)

    def push(self, engine: Engine, job_id: str) -> bool:
        pushed = super().push(engine, job_id)
        self.run_pushed()
        return pushed

    def push_many(self, engine: Engine, job_ids: list[str]) -> int:
        pushed = super().push_many(engine, job_ids)
        self.run_pushed()
        return pushed

    def enqueue(self, job_id: str) -> None:
        super().enqueue(job_id)
        self.run_pushed()

    def run_pushed(self) -> int:
        """Run every queued task in this thread, as a consumer would; returns how many."""
        ran = 0
        while (task := self.huey.dequeue()) is not None:
            ran += 1
            try:
                task.execute()
            except RetryTask:
                pass  # the row stays ``delayed`` with its next attempt recorded
            except Exception:  # noqa: BLE001 -- as a consumer would: log, the row keeps its state
                log.exception("mail task %s failed in-process", task)
        return ran


def mail_testing_settings() -> dict[str, str]:
    """Settings that run queued mail in-process and capture it (see the module docstring)."""
    return {"mail.queue_url": "memory://", "mail.transport": "memory"}


def includeme(config: Configurator) -> None:
    """Switch the mailer of this configuration to in-process, captured delivery."""
    config.registry.settings.update(mail_testing_settings())
    config.registry.registerUtility(InProcessMailQueue, IMailQueueFactory)


def _registry_of(obj: Any) -> Any:
    for _ in range(3):  # TestApp -> router -> registry
        if hasattr(obj, "queryUtility"):
            return obj
        obj = getattr(obj, "registry", None) or getattr(obj, "app", None)
    raise TypeError("get_mail_capture() needs a registry, request, Pyramid app or WebTest TestApp")


def get_mail_capture(obj: Any) -> MemoryTransport:
    """The capture (``.outbox``, ``.last``, ``.clear()``) of an app using
    ``mail.transport = memory``."""
    queue = get_mail_queue(_registry_of(obj))
    transport = queue.transport
    if not isinstance(transport, MemoryTransport):
        raise RuntimeError("mail.transport is not 'memory': include 'pyramid_examcache.testing' "
                           "or use mail_testing_settings()")
    return transport
