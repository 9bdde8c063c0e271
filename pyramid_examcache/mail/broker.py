"""The broker side of the mailer: the Huey instance and the push of one job to it.

``mail.queue_url`` picks Huey's storage:

* ``redis://``, ``rediss://``, ``unix://`` -> :class:`huey.RedisHuey` (short socket timeouts,
  no client-side retries: a request's after-commit push fails fast when Redis is down);
* ``redis+sentinel://h1:26379,h2:26379/<service>/<db>`` -> :class:`huey.RedisHuey` on a
  :class:`redis.sentinel.SentinelConnectionPool` (the primary, found again after a
  failover; :mod:`pyramid_examcache.topology`).  A cluster URL is refused by the settings;
* ``sqlite:///path`` -> :class:`huey.SqliteHuey` (embedded, one file shared by the web
  processes and the consumer);
* ``memory://`` -> :class:`huey.MemoryHuey`, for the in-process test mode of
  :mod:`pyramid_examcache.testing` (which supplies its own broker).

A *broker* is what :mod:`.relay` pushes job ids to. It has two methods:

* ``push(job_id)`` -- hand the job to the queue now (raises when the queue is unreachable);
* ``batch()`` -- a context manager yielding ``push``, entered *around* the database
  transaction that claims the rows: a broker whose pushes may only take effect after that
  transaction commits (the in-process test broker runs the job at once, so it must not run
  it while the claim is uncommitted) acts when the block exits. :class:`HueyBroker`'s
  pushes go to the broker at once (the claim's row lock is what makes them exactly-once).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Protocol

from huey import Huey, MemoryHuey, RedisHuey, SqliteHuey

from ..breaker import Breaker, BreakerOpen
from ..settings import MailSettings

#: seconds the web side stops pushing to a broker after a failed push
PUSH_RETRY_AFTER = 5.0


class QueueUnavailable(ConnectionError):
    """The broker failed a moment ago; the job stays in the outbox for the relay."""


class Broker(Protocol):
    def push(self, job_id: str) -> None: ...

    def batch(self) -> contextlib.AbstractContextManager[Callable[[str], None]]: ...


def make_huey(settings: MailSettings, *, consumer: bool = False) -> Huey:
    """A bare Huey instance for ``settings.queue_url`` (no tasks registered)."""
    url, name = settings.queue_url, settings.queue_name
    if url.startswith("memory:"):
        return MemoryHuey(name, results=False)
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
        options = dict(socket_connect_timeout=timeout, socket_timeout=max(timeout, 1.0) + 5.0,
                       retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 3),
                       health_check_interval=30)
    else:
        options = dict(socket_connect_timeout=timeout, socket_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), health_check_interval=30)
    from ..topology import SENTINEL_SCHEMES, parse, primary_pool

    if url.split("://", 1)[0] in SENTINEL_SCHEMES:
        # every new connection asks the sentinels for the primary: after a failover the
        # pool's connections fail (or hit READONLY), reconnect and find the new primary
        pool = primary_pool(parse(url), **options)
    else:
        pool = redis.ConnectionPool.from_url(url, **options)
    return RedisHuey(name, connection_pool=pool, results=False, blocking=True, read_timeout=1)


class HueyBroker:
    """Pushes ``deliver(job_id)`` tasks to a Huey queue, behind a circuit breaker.

    After a failed push the queue is not tried again for ``PUSH_RETRY_AFTER`` seconds:
    requests committed meanwhile fail over to the relay at once instead of each waiting
    ``mail.queue_timeout`` for a queue that is down.
    """

    def __init__(self, deliver: Callable[[str], Any]) -> None:
        self._deliver = deliver
        self.breaker = Breaker(threshold=1, reset_after=PUSH_RETRY_AFTER)

    def push(self, job_id: str) -> None:
        try:
            self.breaker.call(self._deliver, job_id)
        except BreakerOpen:
            raise QueueUnavailable("the mail queue failed recently; the relay will push this job"
                                   ) from None

    @contextlib.contextmanager
    def batch(self) -> Iterator[Callable[[str], None]]:
        yield self.push
