"""Test helpers for applications that use ``pyramid_examcache`` (the DummyMailer idea).

Make queued mail run in-process and capture it instead of sending it::

    config = Configurator(settings=settings)
    config.include('pyramid_tm')
    config.include('pyramid_examcache')
    config.include('pyramid_examcache.testing')   # any order, before the app is made
    app = config.make_wsgi_app()

(``mail_testing_settings()`` returns the settings it sets:
``{'mail.queue_url': 'memory://', 'mail.transport': 'memory'}``).

The include sets ``mail.queue_url = memory://`` and gives the mailer an in-process broker
(:class:`InProcessBroker`): ``request.mailer.send_queued(...)`` still writes the outbox row
in the request's transaction (so an aborted request sends nothing, M1), and the delivery
task runs synchronously right after the commit. (``memory://`` without this include is
refused: nothing would deliver the mail.) With ``mail.transport = memory`` the message is
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

import contextlib
import logging
from typing import Any, Callable, Iterator

from huey.exceptions import RetryTask
from pyramid.config import Configurator

from .mail import IBrokerFactory, get_mail_queue
from .mail.transports import CapturedMail, MemoryTransport

__all__ = ["CapturedMail", "InProcessBroker", "MemoryTransport", "get_mail_capture",
           "includeme", "mail_testing_settings"]

log = logging.getLogger(__name__)


class InProcessBroker:
    """Runs a pushed delivery in the pushing thread, once the claiming transaction committed.

    The test mode's broker (see :mod:`pyramid_examcache.mail.broker` for the protocol):
    inside ``batch()`` pushes are collected and run when the block exits without error
    (the relay's claim is committed by then); a bare ``push`` runs at once. Fast retries
    are not run: a transient failure leaves the job ``delayed``.
    """

    def __init__(self, deliver: Any) -> None:
        self._deliver = deliver

    def push(self, job_id: str) -> None:
        self._run(job_id)

    @contextlib.contextmanager
    def batch(self) -> Iterator[Callable[[str], None]]:
        pushed: list[str] = []
        yield pushed.append
        for job_id in pushed:
            self._run(job_id)

    def _run(self, job_id: str) -> None:
        try:
            self._deliver.call_local(job_id)
        except RetryTask:
            pass  # the row stays ``delayed`` with its next attempt recorded
        except Exception:  # noqa: BLE001 -- as a consumer would: log, the row keeps its state
            log.exception("mail %s: in-process delivery failed", job_id)


def mail_testing_settings() -> dict[str, str]:
    """Settings that run queued mail in-process and capture it (see the module docstring)."""
    return {"mail.queue_url": "memory://", "mail.transport": "memory"}


def includeme(config: Configurator) -> None:
    """Switch the mailer of this configuration to in-process, captured delivery."""
    config.registry.settings.update(mail_testing_settings())
    config.registry.registerUtility(InProcessBroker, IBrokerFactory)


def _registry_of(obj: Any) -> Any:
    for _ in range(3):  # TestApp -> router -> registry
        if hasattr(obj, "queryUtility"):
            return obj
        obj = getattr(obj, "registry", None) or getattr(obj, "app", None)
    raise TypeError("get_mail_capture() needs a registry, request, Pyramid app or WebTest TestApp")


def get_mail_capture(obj: Any) -> MemoryTransport:
    """The capture (``.outbox``, ``.last``, ``.clear()``) of an app using ``mail.transport = memory``."""
    queue = get_mail_queue(_registry_of(obj))
    transport = queue.transport
    if not isinstance(transport, MemoryTransport):
        raise RuntimeError("mail.transport is not 'memory': include 'pyramid_examcache.testing' "
                           "or use mail_testing_settings()")
    return transport
