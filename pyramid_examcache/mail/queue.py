"""The application's mail handle: settings, Huey with the mail tasks, the broker, resources.

:class:`MailQueue` only wires the parts together (one per application, in the registry, and
one per consumer process); each part does one job:

* :mod:`.broker` -- the Huey instance and pushing a job to it;
* :mod:`.resources` -- the outbox engine and the transport, built lazily;
* :mod:`.tasks` -- the Huey tasks (deliver, relay, purge);
* :mod:`.relay` -- which outbox rows are due and pushing them exactly once;
* :mod:`.outbox` -- the table and its state machine.

Imports run one way: outbox <- relay <- tasks <- queue <- mailer / consumer.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from huey import Huey
from sqlalchemy.engine import Engine

from ..settings import MailSettings, parse_mail_settings
from .broker import Broker, HueyBroker, QueueUnavailable, make_huey
from .resources import Resources
from .tasks import register_tasks
from .transports import Transport

__all__ = ["MailQueue", "QueueUnavailable", "build_huey", "build_queue"]


class MailQueue:
    """``settings``, ``huey`` (with the tasks registered), ``tasks``, ``broker``, ``resources``.

    ``engine``, ``transport`` and ``huey`` may be given instead of being built from the
    settings; ``broker_factory`` replaces the Huey push (the test mode's in-process one);
    ``observer(outcome, row, reason)`` is told of every delivery attempt (the consumer's metrics).
    """

    def __init__(self, settings: MailSettings, *, consumer: bool = False,
                 engine: Engine | None = None, transport: Transport | None = None,
                 huey: Huey | None = None,
                 broker_factory: Callable[[Any], Broker] = HueyBroker,
                 observer: Callable[[str, Any, Any], None] | None = None) -> None:
        self.settings = settings
        self.huey = huey if huey is not None else make_huey(settings, consumer=consumer)
        self.resources = Resources(settings, engine=engine, transport=transport)
        extra = {"observer": observer} if observer is not None else {}
        self.tasks = register_tasks(self.huey, settings, self.resources, broker_factory, **extra)
        self.broker = self.tasks.broker

    @property
    def engine(self) -> Engine:
        return self.resources.engine

    @property
    def transport(self) -> Transport:
        return self.resources.transport

    def enqueue(self, job_id: str) -> None:
        """Push the delivery of ``job_id`` (raises :class:`QueueUnavailable` or the broker's error)."""
        self.broker.push(job_id)

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
