"""Real parts for the mail tests: a scriptable aiosmtpd server, a tiny cookiecutter-style
Pyramid app whose requests really commit, and the consumer as a subprocess."""
from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zope.sqlalchemy
from aiosmtpd.controller import Controller
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPNotFound
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine
from sqlalchemy.orm import sessionmaker

from pyramid_examcache.mail.tasks import RELAY

from ..polling import wait_until  # noqa: F401 -- (the mail tests import it from here)

# -- SMTP ---------------------------------------------------------------------------------


@dataclass
class Attempt:
    at: float
    message_id: str
    reply: str
    peer: Any = None


@dataclass
class ScriptedHandler:
    """An aiosmtpd handler: DATA answers from ``replies`` (then 250); RCPT can be slowed."""

    replies: list[str] = field(default_factory=list)
    rcpt_delays: list[float] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    accepted: list[email.message.EmailMessage] = field(default_factory=list)
    rcpt_seen: threading.Event = field(default_factory=threading.Event)
    #: RCPT TO address -> the reply refusing it (e.g. "550 5.1.1 no such user")
    refuse: dict[str, str] = field(default_factory=dict)
    #: (envelope recipients, raw bytes) of every accepted message
    received: list[tuple[list[str], bytes]] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_seen.set()
        if self.rcpt_delays:
            await asyncio.sleep(self.rcpt_delays.pop(0))
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        reply = self.replies.pop(0) if self.replies else "250 Message accepted for delivery"
        self.attempts.append(Attempt(time.monotonic(), str(msg["Message-ID"]), reply, session.peer))
        if reply.startswith("250"):
            self.accepted.append(msg)
            self.received.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return reply


class SMTPServer:
    def __init__(self, port: int) -> None:
        self.handler = ScriptedHandler()
        self.port = port
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=port)

    def start(self) -> None:
        self.controller.start()
        self.running = True

    def stop(self) -> None:
        if getattr(self, "running", False):
            self.controller.stop()
        self.running = False

    def restart(self) -> None:
        """Start again after :meth:`stop` (same port, same handler and its records)."""
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.start()

    def accepted_ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.handler.accepted]


# -- the web side ---------------------------------------------------------------------------

app_metadata = MetaData()
users_table = Table("mailtest_users", app_metadata,
                    Column("id", Integer, primary_key=True),
                    Column("email", String(200), nullable=False, unique=True))


def get_tm_session(session_factory, transaction_manager, request=None):
    """The cookiecutter's: a session joined to ``request.tm`` (commits with the request)."""
    dbsession = session_factory(info={"request": request})
    zope.sqlalchemy.register(dbsession, transaction_manager=transaction_manager)
    return dbsession


def register_view(request):
    """Create a user and queue a welcome mail; ``fail`` in the body aborts after both."""
    body = request.json_body
    request.dbsession.execute(users_table.insert().values(email=body["email"]))
    job = request.mailer.send_queued(body["email"], "Welcome", f"<p>Hello {body['email']}</p>",
                                     reply_to="help@example.com")
    if body.get("fail"):
        raise RuntimeError("boom after the write")
    request.response.status = 201
    return {"queued": True, "jobId": job.id}


def send_view(request):
    """send_queued(**body): 400 with the ValueError's text for a bad address."""
    try:
        job = request.mailer.send_queued(**request.json_body)
    except ValueError as exc:
        request.response.status = 400
        return {"error": str(exc)}
    request.response.status = 201
    return {"jobId": job.id}


def retry_view(request):
    return {"retried": request.mailer.retry(request.matchdict["job_id"])}


def job_view(request):
    status = request.mailer.job_status(request.matchdict["job_id"])
    if status is None:
        raise HTTPNotFound(json_body={"error": "unknown job"})
    return status


def make_app(db_url: str, settings: dict[str, Any], *, engine=None, include: str = "pyramid_examcache.mail",
             extra: Callable[[Configurator], None] | None = None):
    engine = engine or create_engine(db_url)
    session_factory = sessionmaker(bind=engine)
    all_settings = {"sqlalchemy.url": db_url, "tm.manager_hook": "pyramid_tm.explicit_manager",
                    **settings}
    config = Configurator(settings=all_settings)
    config.include("pyramid_tm")
    config.add_request_method(
        lambda r: get_tm_session(session_factory, r.tm, request=r), "dbsession", reify=True)
    config.include(include)
    if extra is not None:
        extra(config)
    config.add_route("register", "/register")
    config.add_route("job", "/jobs/{job_id}")
    config.add_view(register_view, route_name="register", renderer="json", request_method="POST")
    config.add_view(job_view, route_name="job", renderer="json")
    config.add_route("send", "/send")
    config.add_route("retry", "/jobs/{job_id}/retry")
    config.add_view(send_view, route_name="send", renderer="json", request_method="POST")
    config.add_view(retry_view, route_name="retry", renderer="json", request_method="POST")
    app = config.make_wsgi_app()
    app.engine = engine
    return app


# -- the consumer ---------------------------------------------------------------------------

def write_ini(path: str, settings: dict[str, Any]) -> str:
    lines = "\n".join(f"{k} = {v}" for k, v in settings.items())
    with open(path, "w") as fh:
        fh.write(textwrap.dedent("""\
            [app:main]
            use = egg:examcache_demo
            {settings}

            [loggers]
            keys = root, huey

            [handlers]
            keys = console

            [formatters]
            keys = generic

            [logger_root]
            level = INFO
            handlers = console

            [logger_huey]
            level = INFO
            handlers =
            qualname = huey

            [handler_console]
            class = StreamHandler
            args = (sys.stderr,)
            level = NOTSET
            formatter = generic

            [formatter_generic]
            format = %(asctime)s %(levelname)-5.5s [%(name)s][%(threadName)s] %(message)s
            """).format(settings=lines))
    return path


def consumer_command(ini: str) -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "examcache-consumer")
    if not os.path.exists(script):
        script = shutil.which("examcache-consumer") or ""
    if script:
        return [script, ini]
    return [sys.executable, "-m", "pyramid_examcache.scripts.consumer", ini]


class ConsumerProcess:
    def __init__(self, ini: str, log_path: str, args: list[str] | None = None) -> None:
        self.ini, self.log_path, self.args = ini, log_path, list(args or [])
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(consumer_command(self.ini) + self.args, stdout=log,
                                     stderr=log)
        log.close()
        self.wait_for_log("Huey consumer started", timeout=20)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def wait_for_log(self, needle: str, timeout: float = 10.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(needle) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"consumer exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the consumer log after {timeout}s:\n{self.log()}")

    def rounds(self, task: str = RELAY) -> int:
        """How many runs of the periodic ``task`` (RELAY or PURGE) have finished so far."""
        return len(re.findall(rf"\.{re.escape(task)}: \S+(?: p=-?\d+)? executed in", self.log()))

    def wait_for_rounds(self, n: int, task: str = RELAY, timeout: float = 15.0) -> None:
        """Wait until ``n`` more runs of the periodic ``task`` have finished (from now):
        what they could have done wrong (a second push, a retry, a purge) has happened."""
        target = self.rounds(task) + n
        deadline = time.monotonic() + timeout
        while self.rounds(task) < target:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"consumer exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} {task} round(s) not run after {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def queue_mails(testapp, n: int, tag: str) -> list[str]:
    """Queue ``n`` registration mails through the test app's ``/register``; their job ids."""
    return [testapp.post_json("/register", {"email": f"{tag}{i}@example.com"}, status=201)
            .json["jobId"] for i in range(n)]
