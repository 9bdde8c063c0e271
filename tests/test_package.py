"""The package (issue 13, item 4): the add-on installs alone, without the demo's
dependencies or a paste app; the demo is its own distribution; Huey's internals that the
consumer relies on are still there."""
from __future__ import annotations

import importlib.metadata
import inspect
import json
import pathlib
import re
import signal
import subprocess
import sys

import pytest
from huey import MemoryHuey
from huey.consumer import Consumer, Scheduler

import pyramid_examcache
from pyramid_examcache.scripts.consumer import SCHEDULER_TICK, make_consumer
from pyramid_examcache.settings import parse_mail_settings

ROOT = pathlib.Path(pyramid_examcache.__file__).resolve().parent.parent
#: what only the demo (or an extra) needs; a plain install of the add-on must not pull them
DEMO_ONLY = {"waitress", "alembic", "argon2-cffi", "psycopg", "psycopg-binary", "pyramid-jinja2",
             "examcache-demo", "prometheus-client", "pyramid-debugtoolbar", "hiredis", "webtest"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow
def test_pip_install_of_the_add_on_pulls_no_demo_package(tmp_path):
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                    "--quiet", "--report", str(report), str(ROOT)], check=True, timeout=300,
                   capture_output=True)
    names = {canonical(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert "pyramid-examcache" in names and "huey" in names and "redis" in names
    assert names & DEMO_ONLY == set()


def test_the_add_on_installs_no_paste_app_and_is_typed():
    add_on = importlib.metadata.distribution("pyramid_examcache")
    groups = {(ep.group, ep.name) for ep in add_on.entry_points}
    # a Paste filter (the WSGI fast path), no app
    assert groups == {("console_scripts", "examcache-consumer"),
                      ("paste.filter_app_factory", "fast_path")}
    demo = importlib.metadata.distribution("examcache_demo")
    assert ("paste.app_factory", "main") in {(ep.group, ep.name) for ep in demo.entry_points}
    assert (pathlib.Path(pyramid_examcache.__file__).parent / "py.typed").is_file()
    requires = {canonical(re.split(r"[ ;<>=\[!~]", r)[0]) for r in add_on.requires or ()
                if "extra ==" not in r}
    assert requires & DEMO_ONLY == set()


def test_huey_internals_the_consumer_relies_on():
    """scripts/consumer.py subclasses Huey's Scheduler (a 0.25 s tick, periodic tasks every
    mail.relay_interval) and rewires SIGINT to a graceful stop: if Huey changes these
    internals, this fails -- raise the upper bound on huey only after adapting the consumer."""
    settings = parse_mail_settings({"mail.relay_interval": "7"})

    class Queue:
        huey = MemoryHuey("internals", results=False)

    consumer = make_consumer(Queue(), settings, workers=1)
    assert isinstance(consumer, Consumer)
    scheduler = consumer._create_scheduler()
    assert isinstance(scheduler, Scheduler)
    assert scheduler.interval == SCHEDULER_TICK
    assert type(scheduler).periodic_task_seconds == 7
    loop = inspect.getsource(Scheduler.loop)
    assert "self.interval" in loop and "self.periodic_task_seconds" in loop
    assert consumer._signal_actions[signal.SIGINT] == (False, True)  # graceful, no restart
    assert consumer._signal_actions[signal.SIGTERM] == (False, True)
    assert "self._signal_actions[signum]" in inspect.getsource(Consumer._handle_signal)
