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

import logging
import os
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

from .message import InvalidAddress

log = logging.getLogger(__name__)


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


class _Tracked:
    """Mixed into smtplib's classes: notes when ``DATA`` started (smtplib's public ``data``)."""

    data_started = False

    def data(self, msg):
        self.data_started = True
        return super().data(msg)  # type: ignore[misc]


class _SMTP(_Tracked, smtplib.SMTP):
    pass


class _SMTP_SSL(_Tracked, smtplib.SMTP_SSL):
    pass


class _Session:
    """One thread's connection: how many messages it carried, when it was last used."""

    __slots__ = ("conn", "messages", "last_used", "owner")

    def __init__(self) -> None:
        self.owner = threading.current_thread()
        self.conn: smtplib.SMTP | None = None
        self.messages = 0
        self.last_used = 0.0


def _connection_lost(exc: BaseException) -> bool:
    """Did ``exc`` come from a connection the server dropped (not from a reply to the mail)?"""
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421  # "service not available, closing channel"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, (smtplib.SMTPException, ssl.SSLCertVerificationError)):
        return False
    return isinstance(exc, OSError)  # reset, broken pipe, timeout


class SMTPTransport:
    """smtplib with STARTTLS (``tls``) or implicit TLS (``ssl``) and optional login.

    One connection per thread (a Huey worker), kept open across messages: it is checked
    with ``NOOP`` only after ``noop_after_idle`` seconds unused, closed (``QUIT``) after
    ``max_messages`` messages (0: no limit; 1: a connection per message), dropped after
    any failure, and :meth:`close` closes every thread's connection. When a *reused*
    connection turns out dead before ``DATA`` (the server closed it, 421, reset), the
    same message is sent once more on a fresh connection within the same call: the server
    had not accepted it. A failure once ``DATA`` started is never resent here (the server
    may have accepted it); it is raised like any other failure.
    """

    def __init__(self, host: str, port: int, *, username: str | None = None,
                 password: str | None = None, tls: bool = False, use_ssl: bool = False,
                 timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None,
                 allow_plaintext_auth: bool = False, max_messages: int = 0,
                 noop_after_idle: float = 5.0) -> None:
        self.allow_plaintext_auth = allow_plaintext_auth
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.tls, self.use_ssl, self.timeout = tls, use_ssl, timeout
        self.ssl_context = ssl_context
        self.max_messages = max_messages
        self.noop_after_idle = noop_after_idle
        self._local = threading.local()
        self._sessions: set[_Session] = set()
        self._lock = threading.Lock()

    def _connect(self) -> smtplib.SMTP:
        context = self.ssl_context or ssl.create_default_context()
        if self.use_ssl:
            conn: smtplib.SMTP = _SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                           context=context)
        else:
            conn = _SMTP(self.host, self.port, timeout=self.timeout)
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

    def _session(self) -> _Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _Session()
            with self._lock:  # connections of threads that ended are closed now
                ended = {s for s in self._sessions if not s.owner.is_alive()}
                self._sessions -= ended
                self._sessions.add(session)
            for old in ended:
                _drop(old)
        return session

    def _ready(self, session: _Session) -> tuple[smtplib.SMTP, bool]:
        """The connection of ``session``, opened if needed, and whether it is reused."""
        conn = session.conn
        if conn is not None and time.monotonic() - session.last_used > self.noop_after_idle:
            try:
                alive = conn.noop()[0] == 250
            except (smtplib.SMTPException, OSError):
                alive = False
            if not alive:
                _drop(session)
        conn = session.conn
        if conn is not None:
            return conn, True
        conn = session.conn = self._connect()
        session.messages = 0
        return conn, False

    def send(self, message: EmailMessage, sender: str,
             recipients: list[str]) -> dict[str, str]:
        """Send; returns ``{rcpt: reply}`` of recipients refused while others were accepted.

        Non-ASCII addresses make smtplib ask for ``SMTPUTF8`` (a server without it is a
        permanent failure); they are only queued with ``mail.smtputf8 = true``.
        """
        session = self._session()
        fresh_retry = False
        while True:
            conn, reused = None, False
            try:
                conn, reused = self._ready(session)
                conn.data_started = False  # type: ignore[attr-defined]
                refused = conn.send_message(message, from_addr=sender, to_addrs=recipients)
            except BaseException as exc:
                started = getattr(conn, "data_started", False)
                _drop(session)
                if not isinstance(exc, Exception):
                    raise
                if reused and not started and not fresh_retry and _connection_lost(exc):
                    log.info("reused SMTP connection lost before DATA (%s); sending again on "
                             "a new one", exc)
                    fresh_retry = True
                    continue
                raise classify(exc) from exc
            self._sent(session)
            return refused_replies(refused or {})

    def _sent(self, session: _Session) -> None:
        session.messages += 1
        session.last_used = time.monotonic()
        if self.max_messages and session.messages >= self.max_messages:
            _drop(session)

    def close(self) -> None:
        """Close every thread's connection (the consumer stopping); a later send reconnects."""
        with self._lock:
            sessions = list(self._sessions)
            self._sessions = {s for s in sessions if s.owner.is_alive()}
        for session in sessions:
            _drop(session)


def _drop(session: _Session) -> None:
    conn, session.conn, session.messages = session.conn, None, 0
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
                             allow_plaintext_auth=settings.allow_plaintext_auth,
                             max_messages=settings.smtp_max_messages_per_connection)
    if settings.transport == "file":
        return FileTransport(settings.file_dir)
    return MemoryTransport()
