"""Outcome hooks: :class:`MailDelivered` and :class:`MailFailed`, sent through the Pyramid registry.

The consumer notifies them (``registry.notify``) once per job when its outbox row becomes
``completed`` or ``failed``, so an application can mark bad addresses::

    from pyramid_examcache.mail.events import MailDelivered, MailFailed

    def includeme(config):
        config.add_subscriber(on_failed, MailFailed)

    def on_failed(event):
        if event.permanent:
            for address, reply in event.refused.items():
                mark_bad(address, reply)

They run in the process that delivers: ``examcache-consumer --app CONFIG_URI`` (the
consumer then loads the web application with ``pyramid.paster.bootstrap``, so the
subscribers it registers are called), or the web process itself with
``pyramid_examcache.testing``'s in-process queue. A subscriber runs in the worker thread
after the row was updated: an exception it raises is logged and changes nothing (the mail
is neither resent nor marked otherwise). Transient failures that will be retried notify
nothing; cancelling from the admin page is not a delivery outcome either.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .message import envelope_recipients, split_recipients

__all__ = ["MailDelivered", "MailFailed", "MailJobInfo"]


@dataclass(frozen=True)
class MailJobInfo:
    """The job an event is about (from its outbox row)."""

    id: str
    message_id: str
    sender: str
    subject: str
    #: ``{"to": [...], "cc": [...], "bcc": [...]}``
    addresses: dict[str, list[str]]
    #: attempts made, this one included
    attempts: int

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient (to, cc and bcc)."""
        return envelope_recipients(self.addresses)

    @classmethod
    def from_row(cls, row: Any) -> MailJobInfo:
        return cls(id=row.id, message_id=row.message_id, sender=row.sender,
                   subject=row.subject, addresses=split_recipients(row.recipients),
                   attempts=row.attempts)


@dataclass(frozen=True)
class MailDelivered:
    """The SMTP server accepted the mail; ``refused`` maps the recipients it refused
    while accepting others to its reply (``{'bad@x.org': '550 5.1.1 no such user'}``)."""

    job: MailJobInfo
    refused: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MailFailed:
    """The mail failed for good: ``reason`` is the row's ``failedReason``.

    ``expired`` is true when transient failures went on until ``mail.max_age``;
    otherwise the failure was permanent (a 5xx, an invalid address, a TLS or AUTH
    problem). ``refused`` maps refused recipients to the server's reply.
    """

    job: MailJobInfo
    reason: str
    expired: bool = False
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def permanent(self) -> bool:
        return not self.expired
