"""How a built message leaves the process: SMTP, ``.eml`` files, or an in-memory capture.

Every transport has ``send(message, sender, recipients)`` and ``close()``, and raises
only :class:`TransientMailError` (retry later) or :class:`PermanentMailError` (give up);
:func:`classify` is the single place that decides which is which (M3,
docs/design/mail.md):

* transient: connection refused/reset/closed, timeouts, other socket errors, SMTP 4xx;
* permanent: SMTP 5xx, an invalid address, TLS certificate failures, a server that
  lacks a required extension (STARTTLS/AUTH) -- retrying cannot help.
"""
from __future__ import annotations

import os
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

from .message import InvalidAddress


class MailError(Exception):
    """A delivery failure; ``str(exc)`` is the reason recorded as ``failedReason``.

    ``refused`` maps recipients the server refused to its reply (``failedRecipients``).
    """

    transient = False

    def __init__(self, *args: object, refused: dict[str, str] | None = None) -> None:
        super().__init__(*args)
        self.refused = refused or {}


class TransientMailError(MailError):
    transient = True


class PermanentMailError(MailError):
    transient = False


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return f"{code} {text}".strip()


def refused_replies(refused: dict) -> dict[str, str]:
    """smtplib's ``{rcpt: (code, message)}`` as ``{rcpt: '550 5.1.1 ...'}``."""
    return {rcpt: _reply(code, msg) for rcpt, (code, msg) in refused.items()}


def _by_code(code: int, reason: str) -> MailError:
    if 500 <= code <= 599:
        return PermanentMailError(reason)
    return TransientMailError(reason)  # 4xx, and odd codes (-1 on a broken connect)


def classify(exc: BaseException) -> MailError:
    """Turn any exception raised while sending into a transient or permanent :class:`MailError`."""
    if isinstance(exc, MailError):
        return exc
    if isinstance(exc, InvalidAddress):
        return PermanentMailError(str(exc))
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = refused_replies(exc.recipients)
        reason = "; ".join(f"{rcpt}: {reply}" for rcpt, reply in refused.items())
        if refused and all(reply.startswith("4") for reply in refused.values()):
            return TransientMailError(reason, refused=refused)
        return PermanentMailError(f"all recipients refused: {reason}" if reason else
                                  "all recipients refused", refused=refused)
    if isinstance(exc, smtplib.SMTPResponseException):  # data, sender, helo, auth, connect
        return _by_code(exc.smtp_code, _reply(exc.smtp_code, exc.smtp_error))
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentMailError(f"SMTP server does not support it: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentMailError(f"TLS certificate rejected: {exc}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientMailError(f"connection closed: {exc}")
    if isinstance(exc, (TimeoutError, OSError)):  # refused, reset, timeout, DNS, TLS errors
        return TransientMailError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, smtplib.SMTPException):
        return TransientMailError(f"{type(exc).__name__}: {exc}")
    return PermanentMailError(f"{type(exc).__name__}: {exc}")


class Transport(Protocol):
    def send(self, message: EmailMessage, sender: str,
             recipients: list[str]) -> dict[str, str] | None:
        """Send; returns the recipients refused while others were accepted (or ``None``)."""



    def close(self) -> None: ...


class SMTPTransport:
    """smtplib with STARTTLS (``tls``) or implicit TLS (``ssl``) and optional login.

    One connection per thread (a Huey worker), reused across messages while the
    server keeps it open; a connection that failed is dropped, never reused.
    """

    def __init__(self, host: str, port: int, *, username: str | None = None,
                 password: str | None = None, tls: bool = False, use_ssl: bool = False,
                 timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None,
                 allow_plaintext_auth: bool = False) -> None:
        self.allow_plaintext_auth = allow_plaintext_auth
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.tls, self.use_ssl, self.timeout = tls, use_ssl, timeout
        self.ssl_context = ssl_context
        self._local = threading.local()

    def _connect(self) -> smtplib.SMTP:
        context = self.ssl_context or ssl.create_default_context()
        if self.use_ssl:
            conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                  context=context)
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            conn.ehlo()
            if self.tls:
                conn.starttls(context=context)
                conn.ehlo()
            if self.username:
                conn.login(self.username, self.password or "")
        except BaseException:
            _quietly_close(conn)
            raise
        return conn

    def _connection(self) -> smtplib.SMTP:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                if conn.noop()[0] == 250:
                    return conn
            except (smtplib.SMTPException, OSError):
                pass
            _quietly_close(conn)
        conn = self._local.conn = self._connect()
        return conn

    def send(self, message: EmailMessage, sender: str,
             recipients: list[str]) -> dict[str, str]:
        """Send; returns ``{rcpt: reply}`` of recipients refused while others were accepted.

        Non-ASCII addresses make smtplib ask for ``SMTPUTF8`` (a server without it is a
        permanent failure); they are only queued with ``mail.smtputf8 = true``.
        """
        try:
            conn = self._connection()
            refused = conn.send_message(message, from_addr=sender, to_addrs=recipients)
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception):
                raise classify(exc) from exc
            raise
        return refused_replies(refused or {})

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            _quietly_close(conn)


def _quietly_close(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        conn.close()


class FileTransport:
    """Writes each message to ``<directory>/<timestamp>-<message id>.eml`` (for development)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def send(self, message: EmailMessage, sender: str, recipients: list[str]) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
            ident = str(message.get("Message-ID", "")).strip("<>").replace("/", "_") or "message"
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{ident}.eml"
            path = os.path.join(self.directory, name)
            tmp = f"{path}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(message.as_bytes())
            os.replace(tmp, path)
        except OSError as exc:
            raise TransientMailError(f"cannot write {self.directory}: {exc}") from exc

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class CapturedMail:
    """One message captured by :class:`MemoryTransport`."""

    to: list[str]
    sender: str
    subject: str
    html: str
    text: str
    message_id: str
    headers: dict[str, str]
    message: EmailMessage = field(repr=False, compare=False)

    @property
    def job_id(self) -> str:
        return self.message_id.strip("<>").partition("@")[0]


class MemoryTransport:
    """Keeps sent messages in :attr:`outbox` (a list of :class:`CapturedMail`), for tests."""

    def __init__(self) -> None:
        self.outbox: list[CapturedMail] = []
        self._lock = threading.Lock()

    def send(self, message: EmailMessage, sender: str, recipients: list[str]) -> None:
        html_part = message.get_body(("html",))
        text_part = message.get_body(("plain",))
        captured = CapturedMail(
            to=list(recipients), sender=str(message["From"]), subject=str(message["Subject"]),
            html=html_part.get_content() if html_part is not None else "",
            text=text_part.get_content() if text_part is not None else "",
            message_id=str(message["Message-ID"]),
            headers={k: str(v) for k, v in message.items()},
            message=message,
        )
        with self._lock:
            self.outbox.append(captured)

    @property
    def last(self) -> CapturedMail | None:
        return self.outbox[-1] if self.outbox else None

    def clear(self) -> None:
        with self._lock:
            self.outbox.clear()

    def close(self) -> None:
        pass


def make_transport(settings) -> Transport:
    """The transport named by ``mail.transport`` (``smtp``, ``file`` or ``memory``)."""
    if settings.transport == "smtp":
        return SMTPTransport(settings.host, settings.port, username=settings.username,
                             password=settings.password, tls=settings.tls, use_ssl=settings.ssl,
                             timeout=settings.timeout,
                             allow_plaintext_auth=settings.allow_plaintext_auth)
    if settings.transport == "file":
        return FileTransport(settings.file_dir)
    return MemoryTransport()
