"""Build the RFC 5322 message of a job: addresses, headers, the stable Message-ID."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from html.parser import HTMLParser
from typing import Any

import idna
from email_validator import EmailNotValidError, validate_email

from .attachments import attach


class InvalidAddress(ValueError):
    """A recipient or sender that is not a usable mail address (a permanent failure)."""


#: ``Name <addr>``: a display name, then one address in angle brackets
_NAMED = re.compile(r"^\s*(?P<name>[^<>]*?)\s*<(?P<addr>[^<>]*)>\s*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _refuse_tricks(value: str, field: str) -> None:
    for ch in value:
        if ord(ch) < 32 or ord(ch) == 127 or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise InvalidAddress(f"invalid address in {field}: {value!r} contains a control "
                                 f"character (U+{ord(ch):04X})")
    if "=?" in value:  # an RFC 2047 encoded word: decoded by mail clients into something else
        raise InvalidAddress(f"invalid address in {field}: {value!r} contains an RFC 2047 "
                             f"encoded word ('=?')")


def _check_domain(domain: str, value: str, field: str, smtputf8: bool) -> str:
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidAddress(f"invalid address in {field}: {value!r} ({exc})") from None
    if len(ascii_domain) > 253 or not all(_LABEL.match(label) for label in ascii_domain.split(".")):
        raise InvalidAddress(f"invalid address in {field}: {value!r} (bad domain)")
    if smtputf8 and ascii_domain != domain.lower():
        return idna.decode(ascii_domain)
    return ascii_domain


def validate_address(value: Any, field: str = "address", *, smtputf8: bool = False
                     ) -> tuple[str, str]:
    """``(header form, bare address)`` of ``value`` (``'a@b.c'`` or ``'Name <a@b.c>'``), or raise.

    The local part is checked by ``email-validator`` (no DNS; quoted local parts refused),
    the domain by IDNA (special-use names such as ``localhost`` and ``*.example`` are
    accepted). Control characters and RFC 2047 encoded words anywhere are refused, and
    a non-ASCII local part only with ``smtputf8``. Raises :class:`InvalidAddress` (a
    ``ValueError``) naming ``field``.
    """
    if not isinstance(value, str):
        raise InvalidAddress(f"invalid address in {field}: {value!r} is not a string")
    _refuse_tricks(value, field)
    match = _NAMED.match(value)
    name, addr = (match["name"].strip(), match["addr"].strip()) if match else ("", value.strip())
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"')
    if not addr or "@" not in addr or any(c.isspace() or c in '<>,;"' for c in addr):
        raise InvalidAddress(f"invalid address in {field}: {value!r}")
    local, _at, domain = addr.rpartition("@")
    try:  # the local part, against a placeholder domain (ours is checked below)
        checked = validate_email(f"{local}@example.com", check_deliverability=False,
                                 allow_smtputf8=smtputf8, allow_quoted_local=False)
    except EmailNotValidError as exc:
        hint = "" if smtputf8 else " (internationalised addresses need mail.smtputf8 = true)"
        if not smtputf8 and not local.isascii():
            raise InvalidAddress(f"invalid address in {field}: {value!r}{hint}") from None
        raise InvalidAddress(f"invalid address in {field}: {value!r} ({exc})") from None
    ascii_or_idn = _check_domain(domain, value, field, smtputf8)
    bare = f"{checked.local_part}@{ascii_or_idn}"
    if not name:
        return bare, bare
    try:
        header = str(Address(display_name=name, username=checked.local_part,
                             domain=ascii_or_idn))
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise InvalidAddress(f"invalid address in {field}: {value!r} ({exc})") from None
    return header, bare


def check_address(value: str) -> str:
    """The bare address of a stored ``value`` (``'Name <a@b.c>'`` or ``'a@b.c'``) or raise.

    Used when sending: addresses were validated when queued, so internationalised ones
    are let through here (smtplib asks for SMTPUTF8 when it needs it).
    """
    return validate_address(value, smtputf8=True)[1]


def address_list(value: Any, field: str, *, smtputf8: bool = False,
                 required: bool = False) -> list[tuple[str, str]]:
    """``value`` (an address, a comma-separated string, or a list) as validated pairs."""
    if value is None:
        items: list = []
    elif isinstance(value, str):
        items = [p for p in (part.strip() for part in value.split(",")) if p]
    else:
        items = [p for p in value]
    if required and not items:
        raise ValueError(f"a mail needs at least one recipient in {field}")
    return [validate_address(item.strip() if isinstance(item, str) else item, field,
                             smtputf8=smtputf8) for item in items]


def recipients_list(to: str | Iterable[str]) -> list[str]:
    """``to`` as a non-empty list of strings (a comma-separated string is split)."""
    items = ([p.strip() for p in to.split(",")] if isinstance(to, str)
             else [str(p).strip() for p in to])
    items = [p for p in items if p]
    if not items:
        raise ValueError("a mail needs at least one recipient")
    return items


def make_recipients(to: Any, cc: Any = None, bcc: Any = None, *,
                    smtputf8: bool = False) -> dict[str, list[str]]:
    """Validated, de-duplicated ``{'to', 'cc', 'bcc'}`` (header forms) for the outbox row.

    An address given more than once (in one field or across them) is kept once, in the
    first of ``to``, ``cc``, ``bcc`` where it appears (compared case-insensitively).
    """
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for field, value in (("to", to), ("cc", cc), ("bcc", bcc)):
        out[field] = []
        for header, bare in address_list(value, field, smtputf8=smtputf8, required=field == "to"):
            if bare.lower() not in seen:
                seen.add(bare.lower())
                out[field].append(header)
    return out


def split_recipients(recipients: Any) -> dict[str, list[str]]:
    """A stored ``recipients`` value (a list: ``to`` only; or the dict) as the dict."""
    if isinstance(recipients, dict):
        return {k: list(recipients.get(k) or []) for k in ("to", "cc", "bcc")}
    return {"to": list(recipients or []), "cc": [], "bcc": []}


def envelope_recipients(recipients: Any) -> list[str]:
    """The bare addresses of ``to`` + ``cc`` + ``bcc`` (the SMTP ``RCPT TO`` list)."""
    parts = split_recipients(recipients)
    return [check_address(r) for k in ("to", "cc", "bcc") for r in parts[k]]


def make_message_id(job_id: str, sender: str) -> str:
    """``<job_id@sender-domain>``: the same for every attempt of one job (duplicates are
    recognisable)."""
    _name, addr = parseaddr(sender)
    domain = addr.rpartition("@")[2] if "@" in addr else ""
    domain = domain or "localhost"
    return f"<{job_id}@{domain}>"


def header_name(key: str) -> str:
    """``reply_to`` -> ``Reply-To``; ``X_Mailer`` -> ``X-Mailer``."""
    return "-".join(part.capitalize() for part in key.replace("_", "-").split("-"))


class _TextExtractor(HTMLParser):
    _SKIP = {"script", "style", "head", "title"}
    _BREAK = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BREAK:
            self.parts.append("\n")
        elif tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.parts.append(f" {href} ")

    def handle_endtag(self, tag):
        if tag in self._SKIP and self._skip:
            self._skip -= 1
        elif tag in self._BREAK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """A plain-text alternative for ``html`` (tags dropped, link targets kept)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def build_message(*, sender: str, recipients: Any, subject: str, html: str | None,
                  text: str | None, headers: dict[str, str] | None,
                  message_id: str, attachments: list[dict] | None = None) -> EmailMessage:
    """The message; raises :class:`InvalidAddress` for a bad address.

    multipart/alternative (text + HTML; the text is derived from the HTML when not given),
    or text/plain alone when there is no HTML; multipart/mixed around it when there are
    ``attachments`` (stored dicts, :mod:`.attachments`). ``recipients`` is a list (``To``)
    or ``{'to', 'cc', 'bcc'}``: ``To`` and ``Cc`` become headers, ``bcc`` never does (it
    is only in the envelope, :func:`envelope_recipients`).
    """
    check_address(sender)
    parts = split_recipients(recipients)
    for rcpt in parts["to"] + parts["cc"] + parts["bcc"]:
        check_address(rcpt)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(parts["to"])
    if parts["cc"]:
        msg["Cc"] = ", ".join(parts["cc"])
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id
    for key, value in (headers or {}).items():
        if "\r" in str(value) or "\n" in str(value):
            raise InvalidAddress(f"header {key} contains a line break")
        if header_name(key) in ("Bcc", "To", "Cc", "From", "Message-Id", "Date"):
            continue  # never from free-form headers
        msg[header_name(key)] = str(value)
    if html:
        msg.set_content(text if text is not None else html_to_text(html))
        msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(text or "")
    attach(msg, attachments)
    return msg


__all__ = ["InvalidAddress", "address_list", "build_message", "check_address",
           "envelope_recipients", "header_name", "html_to_text", "make_message_id",
           "make_recipients", "recipients_list", "split_recipients", "validate_address"]
