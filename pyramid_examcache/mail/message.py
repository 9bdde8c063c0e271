"""Build the RFC 5322 message of a job: addresses, headers, the stable Message-ID."""
from __future__ import annotations

import re
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from html.parser import HTMLParser
from typing import Iterable

_ADDR = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+\.[^@\s<>()\[\],;:\"]+$|"
                   r"^[^@\s<>()\[\],;:\"]+@localhost$")


class InvalidAddress(ValueError):
    """A recipient or sender that is not a usable mail address (a permanent failure)."""


def check_address(value: str) -> str:
    """Return the bare address of ``value`` (``'Name <a@b.c>'`` or ``'a@b.c'``) or raise."""
    if not isinstance(value, str) or "\r" in value or "\n" in value:
        raise InvalidAddress(f"invalid address {value!r}")
    _name, addr = parseaddr(value)
    if not addr or not _ADDR.match(addr):
        raise InvalidAddress(f"invalid address {value!r}")
    return addr


def recipients_list(to: str | Iterable[str]) -> list[str]:
    """``to`` as a non-empty list of strings (a comma-separated string is split)."""
    items = [p.strip() for p in to.split(",")] if isinstance(to, str) else [str(p).strip() for p in to]
    items = [p for p in items if p]
    if not items:
        raise ValueError("a mail needs at least one recipient")
    return items


def make_message_id(job_id: str, sender: str) -> str:
    """``<job_id@sender-domain>``: the same for every attempt of one job (duplicates are recognisable)."""
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


def build_message(*, sender: str, recipients: list[str], subject: str, html: str,
                  text: str | None, headers: dict[str, str] | None,
                  message_id: str) -> EmailMessage:
    """The multipart/alternative message; raises :class:`InvalidAddress` for a bad address."""
    check_address(sender)
    for rcpt in recipients:
        check_address(rcpt)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id
    for key, value in (headers or {}).items():
        if "\r" in str(value) or "\n" in str(value):
            raise InvalidAddress(f"header {key} contains a line break")
        msg[header_name(key)] = str(value)
    msg.set_content(text if text is not None else html_to_text(html))
    msg.add_alternative(html, subtype="html")
    return msg


__all__ = ["InvalidAddress", "build_message", "check_address", "html_to_text",
           "make_message_id", "recipients_list", "header_name"]
