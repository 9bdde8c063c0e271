"""The Huey instance built from the ``mail.*`` settings, with the mail tasks registered on it.

``mail.queue_url`` picks the storage:

* ``redis://``, ``rediss://``, ``unix://`` -> :class:`huey.RedisHuey` (short socket timeouts,
  no client-side retries: a request's after-commit push fails fast when Redis is down);
* ``sqlite:///path`` -> :class:`huey.SqliteHuey` (embedded, one file shared by the web
  processes and the consumer);
* ``memory://`` -> :class:`huey.MemoryHuey` in *immediate* mode: tasks run in-process,
  synchronously, when pushed (tests; see :mod:`pyramid_examcache.testing`).

Nothing is registered at import time: each :class:`MailQueue` owns its Huey instance.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Mapping

from huey import Huey, MemoryHuey, RedisHuey, SqliteHuey
from pyramid.exceptions import ConfigurationError
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from ..breaker import Breaker, BreakerOpen
from ..settings import MailSettings, parse_mail_settings
from .transports import Transport, make_transport


#: seconds the web side stops pushing to a broker after a failed push
PUSH_RETRY_AFTER = 5.0


class QueueUnavailable(ConnectionError):
    """The broker failed a moment ago; the job stays in the outbox for the relay."""


def make_huey(settings: MailSettings, *, consumer: bool = False) -> Huey:
    """A bare Huey instance for ``settings.queue_url`` (no tasks registered)."""
    url, name = settings.queue_url, settings.queue_name
    if url.startswith("memory:"):
        return MemoryHuey(name, results=False, immediate=True)
    if url.startswith("sqlite:"):
        filename = url[len("sqlite:///"):]
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        return SqliteHuey(name, filename=filename, results=False,
                          timeout=max(settings.queue_timeout, 5.0))
    import redis
    from redis.backoff import ExponentialBackoff, NoBackoff
    from redis.retry import Retry

    timeout = settings.queue_timeout
    if consumer:  # blocking reads wait up to 1 s; survive short Redis restarts
        pool = redis.ConnectionPool.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=max(timeout, 1.0) + 5.0,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 3), health_check_interval=30)
    else:
        pool = redis.ConnectionPool.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=30)
    return RedisHuey(name, connection_pool=pool, results=False, blocking=True, read_timeout=1)


class MailQueue:
    """Settings + Huey instance + tasks + the lazily built engine and transport they use.

    One per application (``registry``) and one per consumer process. ``engine``,
    ``transport`` and ``huey`` may be given instead of being built from the settings.
    """

    def __init__(self, settings: MailSettings, *, consumer: bool = False,
                 engine: Engine | None = None, transport: Transport | None = None,
                 huey: Huey | None = None) -> None:
        from .tasks import register_tasks

        self.settings = settings
        self.huey = huey if huey is not None else make_huey(settings, consumer=consumer)
        self._engine = engine
        self._owns_engine = False
        self._transport = transport
        self._lock = threading.Lock()
        self.tasks = register_tasks(self)
        self.push_breaker = Breaker(threshold=1, reset_after=PUSH_RETRY_AFTER)

    @property
    def immediate(self) -> bool:
        """True when pushing a job runs it at once, in this process (``memory://``)."""
        return bool(self.huey.immediate)

    @property
    def engine(self) -> Engine:
        """The engine of the outbox database (``mail.outbox_url`` / ``sqlalchemy.url``)."""
        with self._lock:
            if self._engine is None:
                if not self.settings.outbox_url:
                    raise ConfigurationError(
                        "mail.outbox_url is not set (nor sqlalchemy.url): the mail consumer needs "
                        "the database that holds the outbox table")
                self._engine = create_engine(self.settings.outbox_url, pool_pre_ping=True)
                self._owns_engine = True
            return self._engine

    def use_engine(self, engine: Engine) -> None:
        """Use ``engine`` for the outbox unless one is already set (the web side passes its session's)."""
        with self._lock:
            if self._engine is None:
                self._engine = engine

    @property
    def transport(self) -> Transport:
        with self._lock:
            if self._transport is None:
                self._transport = make_transport(self.settings)
            return self._transport

    def enqueue(self, job_id: str) -> None:
        """Push the delivery of ``job_id`` to the broker (raises if the broker is unreachable).

        After a failed push the broker is not tried again for ``PUSH_RETRY_AFTER`` seconds
        (a circuit breaker): requests committed meanwhile fail over to the relay at once
        instead of each waiting ``mail.queue_timeout`` for a broker that is down.
        """
        try:
            self.push_breaker.call(self.tasks.deliver, job_id)
        except BreakerOpen:
            raise QueueUnavailable("the mail queue failed recently; the relay will push this job"
                                   ) from None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._engine is not None and self._owns_engine:
            self._engine.dispose()


def build_queue(settings: Mapping[str, Any] | MailSettings, **kwargs: Any) -> MailQueue:
    """A :class:`MailQueue` from raw ``mail.*`` settings (validated) or parsed ones."""
    if not isinstance(settings, MailSettings):
        settings = parse_mail_settings(settings)
    return MailQueue(settings, **kwargs)


def build_huey(settings: Mapping[str, Any] | MailSettings, **kwargs: Any) -> Huey:
    """The Huey instance for ``settings`` with the mail tasks registered on it."""
    return build_queue(settings, **kwargs).huey
