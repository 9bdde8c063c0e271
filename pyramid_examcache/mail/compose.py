"""pyramid_mailer's :class:`Message`, so its users can switch by changing one include.

``request.mailer.send(message)`` / ``send_to_queue(message)`` queue it in the request's
transaction (as pyramid_mailer's ``send`` does, but through the outbox, with retries and
a status); ``send_immediately(message)`` sends it now. Any object with pyramid_mailer's
attribute names works, pyramid_mailer's own ``Message`` included::

    from pyramid_examcache.mail import Attachment, Message   # or from pyramid_mailer.message

    message = Message(subject="Results", sender="exams@example.com",
                      recipients=["ann@example.com"], body="text part", html="<p>html</p>",
                      attachments=[Attachment("results.pdf", "application/pdf", pdf_bytes)])
    request.mailer.send(message)

``body`` is the text part, ``html`` the HTML part (either may be missing, not both);
``extra_headers`` become headers (``Reply-To`` there is validated like ``reply_to=``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .attachments import Attachment


@dataclass
class Message:
    subject: str | None = None
    recipients: Any = None
    body: Any = None
    html: Any = None
    sender: str | None = None
    cc: Any = None
    bcc: Any = None
    extra_headers: dict[str, str] | None = None
    attachments: list[Any] = field(default_factory=list)

    def attach(self, attachment: Attachment) -> None:
        self.attachments.append(attachment)


def _part(value: Any) -> str | None:
    """A body given as a str, or as pyramid_mailer's ``Attachment`` (its ``data``)."""
    if value is None:
        return None
    if hasattr(value, "data") and not isinstance(value, str):
        value = value.data
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def is_message(value: Any) -> bool:
    """True for a Message-like object (not an address string or a list of them)."""
    return (not isinstance(value, (str, list, tuple, set))
            and hasattr(value, "recipients") and hasattr(value, "subject"))


def message_arguments(message: Any) -> dict[str, Any]:
    """The ``send_queued`` keyword arguments of a Message-like object."""
    headers = dict(getattr(message, "extra_headers", None) or {})
    reply_to = None
    for name in list(headers):
        if name.lower().replace("_", "-") == "reply-to":
            reply_to = headers.pop(name)
    arguments: dict[str, Any] = {
        "to": getattr(message, "recipients", None) or [],
        "subject": getattr(message, "subject", None),
        "html": _part(getattr(message, "html", None)),
        "text": _part(getattr(message, "body", None)),
        "cc": getattr(message, "cc", None),
        "bcc": getattr(message, "bcc", None),
        "reply_to": reply_to,
        "attachments": list(getattr(message, "attachments", None) or []),
        "headers": headers,
    }
    sender = getattr(message, "sender", None)
    if sender:
        arguments["sender"] = sender
    return arguments


__all__ = ["Attachment", "Message", "is_message", "message_arguments"]
