"""Attachments: pyramid_mailer's :class:`Attachment`, stored with the outbox row, put in the MIME.

An attachment is stored in the row's ``attachments`` JSON column as
``{"filename", "content_type", "disposition", "content_id", "data"}`` with ``data``
base64-encoded, so a mail and its files commit together and every retry sends the
same bytes. The whole mail (bodies and attachments) is limited to
``mail.max_message_bytes``: a larger one raises :class:`ValueError` when it is queued.
"""
from __future__ import annotations

import base64
import mimetypes
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

#: content dispositions an attachment may have
DISPOSITIONS = ("attachment", "inline")


@dataclass
class Attachment:
    """A file to send with a mail (pyramid_mailer's names and defaults).

    ``data`` is bytes, a str (encoded as UTF-8) or a readable file object;
    ``content_type`` defaults to a guess from ``filename``; ``disposition`` is
    ``attachment`` (or ``inline``, with a ``content_id`` to reference it from the HTML).
    """

    filename: str | None = None
    content_type: str | None = None
    data: Any = None
    disposition: str | None = None
    transfer_encoding: str | None = None
    content_id: str | None = None


def _data_bytes(data: Any, name: str) -> bytes:
    if hasattr(data, "read"):
        data = data.read()
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise ValueError(f"attachment {name!r}: data must be bytes, str or a file object, "
                     f"got {type(data).__name__}")


def _clean(value: Any, what: str, name: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"attachment {name!r}: {what} contains a control character")
    return text


def store(attachments: Iterable[Any] | None) -> list[dict]:
    """``attachments`` (ours, pyramid_mailer's, or anything with the same attributes) as
    the JSON-ready dicts of the outbox row; raises :class:`ValueError` naming the problem."""
    stored = []
    for index, item in enumerate(attachments or ()):
        filename = _clean(getattr(item, "filename", None), "filename", f"#{index}")
        name = filename or f"#{index}"
        data = _data_bytes(getattr(item, "data", None), name)
        content_type = _clean(getattr(item, "content_type", None), "content_type", name)
        if not content_type:
            guessed = mimetypes.guess_type(filename or "")[0]
            content_type = guessed or "application/octet-stream"
        maintype, _slash, subtype = content_type.partition(";")[0].strip().partition("/")
        if not maintype or not subtype:
            raise ValueError(f"attachment {name!r}: content_type {content_type!r} is not "
                             f"'type/subtype'")
        disposition = (getattr(item, "disposition", None) or "attachment").lower()
        if disposition not in DISPOSITIONS:
            raise ValueError(f"attachment {name!r}: disposition must be one of "
                             f"{', '.join(DISPOSITIONS)}, got {disposition!r}")
        content_id = _clean(getattr(item, "content_id", None), "content_id", name)
        stored.append({"filename": filename, "content_type": f"{maintype}/{subtype}".lower(),
                       "disposition": disposition, "content_id": content_id,
                       "data": base64.b64encode(data).decode("ascii")})
    return stored


def stored_size(stored: list[dict]) -> int:
    """Bytes of the attachments' data (decoded)."""
    return sum(len(item["data"]) * 3 // 4 for item in stored)


def attach(message: EmailMessage, stored: list[dict] | None) -> None:
    """Add the stored attachments to ``message`` (which becomes multipart/mixed)."""
    for item in stored or ():
        maintype, _slash, subtype = item["content_type"].partition("/")
        data = base64.b64decode(item["data"])
        options: dict[str, Any] = {"disposition": item.get("disposition") or "attachment"}
        if item.get("filename"):
            options["filename"] = item["filename"]
        if item.get("content_id"):
            cid = item["content_id"].strip("<>")
            options["cid"] = f"<{cid}>"
        message.add_attachment(data, maintype=maintype, subtype=subtype, **options)


__all__ = ["Attachment", "attach", "store", "stored_size"]
