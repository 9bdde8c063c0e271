"""What a delivery needs besides its job id: the outbox database and the mail transport.

Both are built lazily from the ``mail.*`` settings (a web process that only queues mail
never opens an SMTP connection; the consumer builds its own engine from
``mail.outbox_url``), or given.
"""
from __future__ import annotations

import threading

from pyramid.exceptions import ConfigurationError
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from ..settings import MailSettings
from .transports import Transport, make_transport


class Resources:
    def __init__(self, settings: MailSettings, *, engine: Engine | None = None,
                 transport: Transport | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self._owns_engine = False
        self._transport = transport
        self._lock = threading.Lock()

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
