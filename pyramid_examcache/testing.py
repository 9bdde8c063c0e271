"""Test helpers for applications that use ``pyramid_examcache`` (the DummyMailer idea).

Make queued mail run in-process and capture it instead of sending it::

    config = Configurator(settings=settings)
    config.include('pyramid_tm')
    config.include('pyramid_examcache')
    config.include('pyramid_examcache.testing')   # any order, before the app is made
    app = config.make_wsgi_app()

or put the same into the settings yourself: ``mail_testing_settings()`` returns
``{'mail.queue_url': 'memory://', 'mail.transport': 'memory'}``.

With ``mail.queue_url = memory://`` the queue is a Huey ``MemoryHuey`` in immediate mode:
``request.mailer.send_queued(...)`` still writes the outbox row in the request's
transaction (so an aborted request sends nothing, M1), and the delivery task runs
synchronously right after the commit. With ``mail.transport = memory`` the message is
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
run in immediate mode (a transient failure leaves the job ``delayed``); the memory transport
never fails.
"""
from __future__ import annotations

from typing import Any

from pyramid.config import Configurator

from .mail import get_mail_queue
from .mail.transports import CapturedMail, MemoryTransport

__all__ = ["CapturedMail", "MemoryTransport", "get_mail_capture", "includeme",
           "mail_testing_settings"]


def mail_testing_settings() -> dict[str, str]:
    """Settings that run queued mail in-process and capture it (see the module docstring)."""
    return {"mail.queue_url": "memory://", "mail.transport": "memory"}


def includeme(config: Configurator) -> None:
    """Switch the mailer of this configuration to in-process, captured delivery."""
    config.registry.settings.update(mail_testing_settings())


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
