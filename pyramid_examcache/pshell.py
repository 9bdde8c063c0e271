"""A ``pshell`` setup: ``cache``, ``mailer`` and a transaction (``tm``) ready to use.

In the application's ini file (Pyramid's ``[pshell]`` convention)::

    [pshell]
    setup = pyramid_examcache.pshell.setup

or ``pshell development.ini --setup pyramid_examcache.pshell.setup``.  The shell then has

* ``tm``: ``request.tm``, with a transaction begun (pyramid_tm's explicit manager has none
  until one is), so the request's session, ``mailer.send_queued`` and
  ``mailer.job_status`` work as in a view.  ``tm.commit()`` commits the session, then
  applies the cache invalidations and ``cache.set`` calls and pushes the queued mails;
  ``tm.abort()`` drops them.  Begin the next one with ``tm.begin()``.  Whatever is
  still uncommitted when the shell exits is aborted.
* ``cache``: ``request.cache`` (when the application includes the cache);
* ``mailer``: ``request.mailer`` (when it includes the mailer).

An application with a ``setup`` of its own calls this one from it (it is a generator:
``with contextlib.contextmanager(pyramid_examcache.pshell.setup)(env): yield``).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .mail import IMailQueue
from .settings import parse_mail_settings
from .transaction import open_transaction

__all__ = ["setup"]


def setup(env: dict[str, Any]) -> Iterator[None]:
    """Add ``tm`` (a transaction begun), ``cache`` and ``mailer`` to the pshell ``env``;
    abort what is left uncommitted when the shell exits."""
    request = env["request"]
    registry = env["registry"]
    manager = getattr(request, "tm", None)
    if manager is not None:
        if open_transaction(request) is None:
            manager.begin()
        env["tm"] = manager
    from .cache import ICachePolicy

    if registry.queryUtility(ICachePolicy) is not None:
        env["cache"] = request.cache
    if registry.queryUtility(IMailQueue) is not None:
        attr = parse_mail_settings(registry.settings, in_process=True).request_attr
        env["mailer"] = getattr(request, attr)
    try:
        yield
    finally:
        if manager is not None and open_transaction(request) is not None:
            manager.abort()
