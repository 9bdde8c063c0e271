"""The tutorial (docs/tutorial.md) executed: its code is the files under docs/tutorial/, which
the page shows with ``literalinclude``, so the two cannot drift.

The test does what a reader does, on real services: copies the cookiecutter-shaped project,
installs it the way ``pip install -e .`` would (a dist-info with the ``paste.app_factory``
entry point on sys.path), points development.ini at a private Redis and an aiosmtpd sink,
runs ``alembic -c development.ini upgrade head`` (the starter's table, then the outbox and the
invalidation log), starts ``examcache-consumer development.ini`` and loads the app with
``pyramid.paster.get_app`` (as pserve does). Over WebTest, with pyramid_tm committing every
request on SQLite: the cached view misses then hits, a POST that changes the row invalidates
its key after the commit (the next GET misses and shows the new value), bad input is a 400
naming the field, and the queued welcome mail is delivered by the consumer to the sink.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import webtest
from sqlalchemy import create_engine, select, text

from .conftest import PrivateRedis, free_port
from .mail.support import ConsumerProcess, SMTPServer, consumer_command
from .polling import wait_until

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial"
pytestmark = pytest.mark.slow  # processes: alembic, the consumer, redis, the how-to's pytest


def install_editable(project: Path) -> None:
    """What ``pip install -e .`` leaves for importlib.metadata: the entry point of setup.py."""
    info = project / "myproject-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myproject\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[paste.app_factory]\nmain = myproject:main\n")
    assert "'main = myproject:main'" in (project / "setup.py").read_text()


def configure(ini: Path, redis_port: int, smtp_port: int) -> None:
    """The reader's own Redis and SMTP server: here, the test's."""
    source = ini.read_text()
    edited = (source.replace("redis://localhost:6379/", f"redis://127.0.0.1:{redis_port}/")
              .replace("mail.host = localhost", "mail.host = 127.0.0.1")
              .replace("mail.port = 8025", f"mail.port = {smtp_port}"))
    assert edited.count(str(redis_port)) == 2 and str(smtp_port) in edited
    ini.write_text(edited)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = tmp_path_factory.mktemp("tutorial") / "myproject"
    shutil.copytree(TUTORIAL, project, ignore=shutil.ignore_patterns("__pycache__"))
    install_editable(project)
    redis, smtp = PrivateRedis(), SMTPServer(free_port())
    functional = None
    with pytest.MonkeyPatch.context() as patch:
        try:
            redis.start()
            smtp.start()
            configure(project / "development.ini", redis.port, smtp.port)
            patch.chdir(project)
            patch.syspath_prepend(str(project))
            patch.setenv("PYTHONPATH", os.pathsep.join([str(project), *sys.path]))
            functional = run_functional_tests(project)  # in parallel with what follows
            yield project, smtp, functional
        finally:
            if functional is not None and functional.poll() is None:
                functional.kill()
                functional.wait(10)
            smtp.stop()
            redis.stop()
            shutil.rmtree(redis.dir, ignore_errors=True)
            for name in [m for m in sys.modules if m == "myproject" or m.startswith("myproject.")]:
                del sys.modules[name]


def run_functional_tests(project: Path) -> subprocess.Popen:
    """The how-to's tests (docs/tutorial/tests/, shown by docs/howto/testing.md), run by
    pytest in the project as its developer would run them."""
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--basetemp", str(project / ".pytest-tmp"), "tests"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def migrate(project: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "alembic", "-c", "development.ini",
                             "upgrade", "head"], cwd=project, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    engine = create_engine(f"sqlite:///{project / 'myproject.sqlite'}")
    with engine.begin() as conn:
        tables = {row[0] for row in conn.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
        assert {"models", "examcache_mail_outbox", "examcache_invalidation_log"} <= tables
    engine.dispose()


@pytest.fixture(scope="module")
def system(project):
    """The migrated database, the consumer and the app as pserve loads it."""
    from pyramid.paster import get_app

    from pyramid_examcache.cache import get_policy
    from pyramid_examcache.mail import get_mail_queue

    directory, _smtp, _functional = project
    consumer = ConsumerProcess(str(directory / "development.ini"), str(directory / "consumer.log"))

    migrated = threading.Event()

    def migrate_then_consume() -> None:  # two processes, while this one imports the app
        migrate(directory)
        migrated.set()
        start(consumer)

    app = None
    try:  # the consumer is stopped even when the set-up fails after starting it
        with ThreadPoolExecutor(1) as pool:
            started = pool.submit(migrate_then_consume)
            try:
                importlib.import_module("myproject")  # the imports, while alembic runs
                importlib.import_module("pyramid_debugtoolbar")
                # the app once the tables exist, as after `alembic upgrade head`
                while not migrated.wait(0.05):
                    if started.done():
                        started.result()  # the migration failed: its error
                app = get_app(str(directory / "development.ini"))
            finally:
                started.result()
        initialize_db(app)
        yield app, consumer
    finally:
        consumer.stop()
        if app is not None:
            get_policy(app.registry).close()
            get_mail_queue(app.registry).close()
            app.registry["dbsession_factory"].kw["bind"].dispose()


def start(consumer: ConsumerProcess) -> None:
    """ConsumerProcess.start with a deadline for a busy machine (three Python processes
    start at once here)."""
    with open(consumer.log_path, "ab") as log:
        consumer.proc = subprocess.Popen(consumer_command(consumer.ini), stdout=log, stderr=log)
    consumer.wait_for_log("Huey consumer started", timeout=90)


def initialize_db(app) -> None:
    """``initialize_myproject_db development.ini`` (the starter's script) without its
    setup_logging: its request, its transaction and its registered session."""
    from pyramid.scripting import prepare

    from myproject.scripts.initialize_db import setup_models

    with prepare(registry=app.registry) as env, env["request"].tm:
        setup_models(env["request"].dbsession)


def stored_value(app, name: str) -> int:
    from myproject.models import MyModel

    engine = app.registry["dbsession_factory"].kw["bind"]
    with engine.connect() as conn:
        return conn.execute(select(MyModel.value).where(MyModel.name == name)).scalar_one()


def test_the_cached_view_hits_and_a_committed_write_invalidates_it(system):
    app, _consumer = system
    testapp = webtest.TestApp(app)
    first = testapp.get("/models/one")
    assert first.headers["X-Cache"] == "MISS" and first.json == {"name": "one", "value": 1}
    second = testapp.get("/models/one")
    assert second.headers["X-Cache"] == "HIT" and second.json == first.json

    updated = testapp.post("/models/one", {"value": "2"})  # pyramid_tm commits it
    assert updated.json == {"name": "one", "value": 2}
    assert stored_value(app, "one") == 2  # committed, not a doomed transaction
    after = testapp.get("/models/one")
    assert after.headers["X-Cache"] == "MISS" and after.json["value"] == 2
    assert testapp.get("/models/one").headers["X-Cache"] == "HIT"

    refused = testapp.post("/models/one", {"value": "two"}, status=400)
    assert "value: an integer is required" in refused.text
    assert stored_value(app, "one") == 2
    assert testapp.get("/models/one").json["value"] == 2


def test_the_welcome_mail_is_queued_and_the_consumer_delivers_it(system, project):
    app, consumer = system
    _directory, smtp, _functional = project
    testapp = webtest.TestApp(app)
    assert "email: an address is required" in testapp.post(
        "/subscribe", {"email": "nobody"}, status=400).text
    job_id = testapp.post("/subscribe", {"email": "ada@example.com"}).json["jobId"]
    assert testapp.get(f"/jobs/{job_id}").json["state"] in ("waiting", "active", "completed")
    wait_until(lambda: testapp.get(f"/jobs/{job_id}").json["state"] == "completed",
               timeout=60, message=f"the job delivered\n{consumer.log()}")
    assert [rcpt for rcpt, _raw in smtp.handler.received] == [["ada@example.com"]]
    mail = smtp.handler.accepted[0]
    assert mail["Subject"] == "Welcome to myproject" and job_id in mail["Message-ID"]
    assert testapp.get("/jobs/no-such-job", status=404)


def test_the_testing_how_to_tests_pass_in_the_project(project):
    """docs/howto/testing.md: pyramid_examcache.testing and memory:// in the app's own tests."""
    _directory, _smtp, functional = project
    output, _ = functional.communicate(timeout=300)
    assert functional.returncode == 0, output
    assert "4 passed" in output, output
