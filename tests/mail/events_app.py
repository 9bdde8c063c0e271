"""A WSGI app for ``examcache-consumer --app``: subscribes to the mail outcome events and
appends each one, as a JSON line, to the file named by the ``test.events_file`` setting."""
from __future__ import annotations

import dataclasses
import json
import threading

from pyramid.config import Configurator

from pyramid_examcache.mail.events import MailDelivered, MailFailed

_lock = threading.Lock()


def recorder(path: str):
    def record(event) -> None:
        line = {"event": type(event).__name__, **dataclasses.asdict(event),
                "recipients": event.job.recipients}
        if isinstance(event, MailFailed):
            line["permanent"] = event.permanent
        with _lock, open(path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
    return record


def main(global_config, **settings):
    config = Configurator(settings=settings)
    config.include("pyramid_examcache.mail")
    record = recorder(settings["test.events_file"])
    config.add_subscriber(record, MailDelivered)
    config.add_subscriber(record, MailFailed)
    return config.make_wsgi_app()
