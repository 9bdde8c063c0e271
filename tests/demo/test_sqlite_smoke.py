"""The embedded defaults: development.ini on SQLite with the memory:// cache.

* the init script (migrations + sample data) is idempotent and the migration
  downgrades cleanly;
* the API works in-process on SQLite (mail captured);
* the README walkthrough, for real: ``pserve`` and ``examcache-consumer`` as
  processes on a copy of development.ini, mail delivered as .eml files.
"""
from __future__ import annotations

import email
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from alembic import command
from pyramid.paster import get_appsettings
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.pool import NullPool

from demo_app.models import Exam, Question, User
from demo_app.scripts import initialize_db
from pyramid_examcache.testing import get_mail_capture

from ..conftest import free_port, stop_processes, wait_for_port
from .conftest import FAST_ARGON2, close_testapp, make_testapp
from .helpers import bearer, login, register_verified
from .hooks import FailAfterView

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch):
    """The script's setup_logging() would reconfigure (and disable) this process's loggers."""
    monkeypatch.setattr(initialize_db, "setup_logging", lambda config_uri: None)


@pytest.fixture
def dev_ini(tmp_path) -> Path:
    """development.ini copied to a temporary directory (so var/ lands there), on a free port."""
    text = (ROOT / "development.ini").read_text()
    port = free_port()
    text = text.replace("listen = localhost:6543", f"listen = 127.0.0.1:{port}")
    # links in mails come from demo.public_url (never the Host header): point it at this server
    text = text.replace("demo.public_url = http://localhost:6543",
                        f"demo.public_url = http://127.0.0.1:{port}")
    for name, value in FAST_ARGON2.items():
        text = re.sub(rf"^{re.escape(name)} = .*$", f"{name} = {value}", text, flags=re.M)
    ini = tmp_path / "development.ini"
    ini.write_text(text)
    return ini


def counts(url: str) -> tuple[int, int, int]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        result = tuple(conn.scalar(select(func.count()).select_from(m)) for m in (User, Exam, Question))
    engine.dispose()
    return result


def test_initdb_is_idempotent_and_the_migration_reversible(dev_ini, capsys):
    assert not (dev_ini.parent / "var").exists()
    assert initialize_db.main(["examcache-initdb", str(dev_ini)]) == 0
    assert "added 1 user(s), 3 exam(s), 150 question(s)" in capsys.readouterr().out
    url = get_appsettings(str(dev_ini))["sqlalchemy.url"]
    assert counts(url) == (1, 3, 150)
    assert initialize_db.main(["examcache-initdb", str(dev_ini)]) == 0
    assert "added 0 user(s), 0 exam(s), 0 question(s)" in capsys.readouterr().out
    assert counts(url) == (1, 3, 150)

    cfg = initialize_db.alembic_config(url)
    command.downgrade(cfg, "base")
    engine = create_engine(url, poolclass=NullPool)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    command.upgrade(cfg, "head")
    assert {"users", "exams", "questions", "examcache_mail_outbox"} <= set(
        inspect(engine).get_table_names())
    engine.dispose()


def test_the_api_on_sqlite_and_the_memory_cache(dev_ini):
    initialize_db.main(["examcache-initdb", str(dev_ini)])
    settings = dict(get_appsettings(str(dev_ini)))
    assert settings["examcache.redis_url"] == "memory://"
    app = make_testapp(settings)
    try:
        mail = get_mail_capture(app)
        student = register_verified(app, mail, "sqlite@example.com")
        assert app.get("/api/exams/2/questions").headers["X-Cache"] == "MISS"
        assert app.get("/api/exams/2/questions").headers["X-Cache"] == "HIT"
        app.put_json("/api/exams/2/questions/51", {"text": "Edited on SQLite"},
                     headers=bearer(student), status=403)
        with pytest.raises(FailAfterView, match="on purpose"):
            app.put_json("/api/exams/2/questions/51", {"text": "Rolled back"},
                         headers={**bearer(login(app)), "X-Test-Fail": "after-view"})
        assert app.get("/api/exams/2/questions").headers["X-Cache"] == "HIT"
        app.put_json("/api/exams/2/questions/51", {"text": "Edited on SQLite"},
                     headers=bearer(login(app)), status=200)
        fresh = app.get("/api/exams/2/questions")
        assert fresh.headers["X-Cache"] == "MISS"
        assert fresh.json["questions"][0]["text"] == "Edited on SQLite"
        app.post_json("/api/auth/register", {"email": "sqlite@example.com", "password": "x" * 8,
                                             "name": "Again"}, status=409)
        assert app.get("/api/exams/7", status=404).json["message"] == "no such exam"
    finally:
        close_testapp(app)


# -- the README walkthrough with real processes ----------------------------------

def _script(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    module = {"pserve": "pyramid.scripts.pserve",
              "examcache-consumer": "pyramid_examcache.scripts.consumer"}[name]
    return [sys.executable, "-m", module]


def call(method: str, url: str, body: dict | None = None, token: str | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_walkthrough_with_pserve_and_the_consumer(dev_ini, tmp_path):
    initialize_db.main(["examcache-initdb", str(dev_ini)])
    port = int(re.search(r"listen = 127.0.0.1:(\d+)", dev_ini.read_text()).group(1))
    base = f"http://127.0.0.1:{port}"
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("pserve", "consumer")}
    procs = [
        subprocess.Popen(_script("pserve") + [str(dev_ini)], stdout=logs["pserve"],
                         stderr=subprocess.STDOUT, cwd=tmp_path),
        subprocess.Popen(_script("examcache-consumer") + [str(dev_ini)],
                         stdout=logs["consumer"], stderr=subprocess.STDOUT, cwd=tmp_path),
    ]
    try:
        wait_for_port(port, timeout=20)
        status, _, body = call("POST", f"{base}/api/auth/register",
                               {"email": "walk@example.com", "password": "correct horse battery",
                                "name": "Walker"})
        assert status == 201, body
        job_id = body["email"]["jobId"]
        # a job's status is for its recipient or an admin: the sample teacher
        # (development.ini's demo.sample_password)
        teacher = call("POST", f"{base}/api/auth/login",
                       {"email": "teacher@example.com", "password": "examcache-demo"})[2]["token"]
        assert call("GET", f"{base}/api/jobs/{job_id}")[0] == 404  # anonymous
        wait_for(lambda: call("GET", f"{base}/api/jobs/{job_id}",
                              token=teacher)[2]["state"] == "completed",
                 what="the consumer to deliver the mail")
        files = list((tmp_path / "var" / "mail").glob("*.eml"))
        assert len(files) == 1
        message = email.message_from_binary_file(files[0].open("rb"))
        assert message["To"] == "walk@example.com"
        text = message.get_payload(0).get_payload(decode=True).decode()
        link = re.search(r"http://\S+/api/auth/verify\?token=[\w-]+", text).group(0)
        assert link.startswith(base)
        assert call("GET", link)[0] == 200
        assert call("GET", link)[0] == 400  # single use

        status, _, body = call("POST", f"{base}/api/auth/login",
                               {"email": "teacher@example.com", "password": "examcache-demo"})
        teacher = body["token"]
        url = f"{base}/api/exams/3/questions"
        assert call("GET", url)[1]["X-Cache"] == "MISS"
        assert call("GET", url)[1]["X-Cache"] == "HIT"
        status, _, body = call("PUT", f"{base}/api/exams/3/questions/101",
                               {"text": "Edited through pserve"}, token=teacher)
        assert status == 200, body
        status, headers, body = call("GET", url)
        assert headers["X-Cache"] == "MISS"
        assert body["questions"][0]["text"] == "Edited through pserve"
    finally:
        stop_processes(procs)
        for log in logs.values():
            log.close()
    shutil.rmtree(tmp_path / "var", ignore_errors=True)
