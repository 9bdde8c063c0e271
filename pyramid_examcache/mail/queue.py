"""The mail wiring: one :class:`MailQueue` per application (and per consumer process).

It holds everything a queued mail needs besides its outbox row, built from the ``mail.*``
settings or given:

* the Huey instance with the mail tasks (:mod:`.tasks`) registered on it. ``mail.queue_url``
  picks its storage: ``redis://``, ``rediss://``, ``unix://`` -> :class:`huey.PriorityRedisHuey`
  (a sorted set, so mail priorities hold, :mod:`.priority`; short socket timeouts, no
  client-side retries: a request's after-commit push fails fast when Redis is down);
  ``redis+sentinel://h1:26379,h2:26379/<service>/<db>`` -> the same on the service's
  primary, found again after a failover (:mod:`pyramid_examcache.topology`);
  ``sqlite:///path`` -> :class:`huey.SqliteHuey` (one file shared by the web processes and
  the consumer; priorities built in). A consumer finding the list of an older release
  (:class:`huey.RedisHuey`) under the queue's key moves its entries over on start
  (:func:`upgrade_list_queue`). ``memory://`` is no production queue: ``pyramid_examcache.testing``
  registers its own, in-process queue for it;
* the *broker* (:class:`HueyBroker`): what :mod:`.relay` pushes job ids to, behind a
  circuit breaker;
* the outbox engine and the transport, built lazily (a web process that only queues mail
  never opens an SMTP connection; the consumer builds its engine from ``mail.outbox_url``).

Imports run one way: outbox <- relay <- tasks <- queue <- mailer / consumer.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from huey import Huey, PriorityRedisHuey, SqliteHuey
from pyramid.exceptions import ConfigurationError
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from ..breaker import Breaker, BreakerOpen
from ..settings import MailSettings, parse_mail_settings
from .relay import push_many, push_one
from .tasks import register_tasks
from .transports import Transport, make_transport

__all__ = ["HueyBroker", "MailQueue", "QueueUnavailable", "build_huey", "build_queue",
           "make_huey", "upgrade_list_queue"]

log = logging.getLogger(__name__)

#: seconds the web side stops pushing to a broker after a failed push
PUSH_RETRY_AFTER = 5.0


class QueueUnavailable(ConnectionError):
    """The broker failed a moment ago; the job stays in the outbox for the relay."""


def make_huey(settings: MailSettings, *, consumer: bool = False) -> Huey:
    """A bare Huey instance for ``settings.queue_url`` (no tasks registered)."""
    url, name = settings.queue_url, settings.queue_name
    if url.startswith("sqlite:"):
        filename = url[len("sqlite:///"):]
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        return SqliteHuey(name, filename=filename, results=False,
                          timeout=max(settings.queue_timeout, 5.0))
    import redis
    from redis.backoff import ExponentialBackoff, NoBackoff
    from redis.retry import Retry

    from ..topology import parse, primary_pool

    topo = parse(url)
    if topo.kind not in ("single", "sentinel"):
        raise ConfigurationError(f"mail.queue_url = {url}: no Huey storage for this URL")
    timeout = settings.queue_timeout
    if consumer:  # blocking reads wait up to 1 s; survive short Redis restarts
        options = dict(socket_connect_timeout=timeout, socket_timeout=max(timeout, 1.0) + 5.0,
                       retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 3),
                       health_check_interval=30)
    else:
        options = dict(socket_connect_timeout=timeout, socket_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), health_check_interval=30)
    if topo.kind == "sentinel":
        # every new connection asks the sentinels for the primary: after a failover the
        # pool's connections fail (or hit READONLY), reconnect and find the new primary
        pool = primary_pool(topo, **options)
    else:
        pool = redis.ConnectionPool.from_url(url, **options)
    huey = PriorityRedisHuey(name, connection_pool=pool, results=False, blocking=True,
                             read_timeout=1)
    if consumer:
        upgrade_list_queue(huey)
    return huey


def upgrade_list_queue(huey: Huey) -> int:
    """Move the entries of an older release's queue (a Redis list, :class:`huey.RedisHuey`)
    into the sorted set of :class:`huey.PriorityRedisHuey` under the same key, oldest first,
    at normal priority; returns how many. The list is renamed first (atomic), so web
    processes of this release pushing meanwhile create the sorted set unhindered."""
    storage = huey.storage
    key = storage.queue_key
    if storage.conn.type(key) not in (b"list", "list"):
        return 0
    legacy = f"{key}.list-upgrade"
    storage.conn.rename(key, legacy)
    moved = 0
    while (data := storage.conn.rpop(legacy)) is not None:  # LPUSH/BRPOP: oldest on the right
        storage.enqueue(data)
        moved += 1
    log.warning("mail queue %s: moved %d entries of the list queue of an older release to the "
                "priority queue", key, moved)
    return moved


class HueyBroker:
    """Pushes ``deliver(job_id)`` tasks to a Huey queue, behind a circuit breaker.

    After a failed push the queue is not tried again for ``PUSH_RETRY_AFTER`` seconds:
    requests committed meanwhile fail over to the relay at once instead of each waiting
    ``mail.queue_timeout`` for a queue that is down.
    """

    def __init__(self, deliver: Any) -> None:  # huey's TaskWrapper (call it, or .schedule)
        self._deliver = deliver
        self.breaker = Breaker(threshold=1, reset_after=PUSH_RETRY_AFTER)
        self.warned = False

    def push(self, job_id: str, eta: Any = None, priority: int = 0) -> None:
        """Enqueue ``deliver(job_id)`` with Huey's ``priority`` (:mod:`.priority`, higher
        first); with ``eta`` (an aware datetime), run it then (at that priority)."""
        try:
            self.breaker.call(self._enqueue, job_id, eta, priority or None)
        except BreakerOpen:
            raise QueueUnavailable("the mail queue failed recently; the relay will push this job"
                                   ) from None

    def _enqueue(self, job_id: str, eta: Any, priority: int | None) -> None:
        try:
            if eta is None:
                self._deliver(job_id, priority=priority)
            else:
                self._deliver.schedule(args=(job_id,), eta=eta, priority=priority)
        except NotImplementedError:  # a storage without priorities (a given plain RedisHuey)
            if priority is None:
                raise
            if not self.warned:
                log.warning("the mail queue's Huey storage has no priorities: mails are "
                            "delivered in queue order (use huey.PriorityRedisHuey)")
                self.warned = True
            self._enqueue(job_id, eta, None)


class Resources:
    """The outbox engine and the transport, built on first use (or given)."""

    def __init__(self, settings: MailSettings, *, engine: Engine | None = None,
                 transport: Transport | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self._owns_engine = False
        self._transport = transport
        self._lock = threading.Lock()
        #: ``notify(event)`` for :mod:`.events` (a registry's ``notify``); None: no events
        self.notify: Callable[[Any], None] | None = None

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
        """Use ``engine`` for the outbox unless one is set (the web side offers its session's)."""
        with self._lock:
            if self._engine is None:
                self._engine = engine

    @property
    def transport(self) -> Transport:
        with self._lock:
            if self._transport is None:
                self._transport = make_transport(self.settings)
            return self._transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._engine is not None and self._owns_engine:
            self._engine.dispose()


class MailQueue:
    """``settings``, ``huey`` (with the tasks registered), ``tasks``, ``broker``, ``resources``.

    ``engine``, ``transport`` and ``huey`` may be given instead of being built from the
    settings; ``observer(outcome, row, reason)`` is told of every delivery attempt (the
    consumer's metrics).
    """

    def __init__(self, settings: MailSettings, *, consumer: bool = False,
                 engine: Engine | None = None, transport: Transport | None = None,
                 huey: Huey | None = None,
                 observer: Callable[[str, Any, Any], None] | None = None) -> None:
        self.settings = settings
        self.huey = huey if huey is not None else make_huey(settings, consumer=consumer)
        self.resources = Resources(settings, engine=engine, transport=transport)
        extra = {"observer": observer} if observer is not None else {}
        self.tasks = register_tasks(self.huey, settings, self.resources, HueyBroker, **extra)
        self.broker = self.tasks.broker

    @property
    def engine(self) -> Engine:
        return self.resources.engine

    @property
    def transport(self) -> Transport:
        return self.resources.transport

    def enqueue(self, job_id: str) -> None:
        """Push the delivery of ``job_id`` (raises :class:`QueueUnavailable` or the broker's
        error)."""
        self.broker.push(job_id)

    def push(self, engine: Engine, job_id: str) -> bool:
        """Push a committed, never-pushed job of the outbox in ``engine`` (the after-commit
        step, :func:`.relay.push_one`); ``False`` if not pushed (the relay catches up)."""
        return push_one(engine, self.broker, job_id)

    def push_many(self, engine: Engine, job_ids: list[str]) -> int:
        """:meth:`push` for the rows one transaction queued (:func:`.relay.push_many`):
        how many were pushed."""
        return push_many(engine, self.broker, job_ids)

    def close(self) -> None:
        self.resources.close()


def build_queue(settings: Mapping[str, Any] | MailSettings, **kwargs: Any) -> MailQueue:
    """A :class:`MailQueue` from raw ``mail.*`` settings (validated) or parsed ones."""
    if not isinstance(settings, MailSettings):
        settings = parse_mail_settings(settings)
    return MailQueue(settings, **kwargs)


def build_huey(settings: Mapping[str, Any] | MailSettings, **kwargs: Any) -> Huey:
    """The Huey instance for ``settings`` with the mail tasks registered on it."""
    return build_queue(settings, **kwargs).huey
