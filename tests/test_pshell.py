"""``pyramid_examcache.pshell.setup``: pshell on the demo's development.ini (SQLite, pyramid_tm's
explicit manager) gets ``tm`` with a transaction begun, ``cache`` and ``mailer``; run through
Pyramid's own ``PShellCommand`` with a shell that acts, on ``memory://`` and on a private Redis."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from pyramid.paster import bootstrap
from pyramid.scripts.pshell import PShellCommand
from sqlalchemy import func, select
from transaction.interfaces import NoTransaction

from demo_app.models import User
from demo_app.scripts import initialize_db
from pyramid_examcache.cache import get_policy

ROOT = Path(__file__).resolve().parents[1]
FAST_ARGON2 = {"demo.argon2_time_cost": "1", "demo.argon2_memory_cost": "8",
               "demo.argon2_parallelism": "1"}


@pytest.fixture(params=["memory", "redis"])
def ini(request, tmp_path, monkeypatch) -> str:
    """development.ini's application section in a temporary directory (no logging
    sections: pshell would reconfigure this process's loggers), its database created."""
    text = (ROOT / "development.ini").read_text()
    app = text[text.index("[app:main]"):text.index("[alembic]")]
    for name, value in FAST_ARGON2.items():
        app = re.sub(rf"^{re.escape(name)} = .*$", f"{name} = {value}", app, flags=re.M)
    if request.param == "redis":
        url = request.getfixturevalue("private_redis").url
        app = app.replace("examcache.redis_url = memory://", f"examcache.redis_url = {url}")
        assert url in app
    path = tmp_path / "development.ini"
    path.write_text(app)
    monkeypatch.setattr(initialize_db, "setup_logging", lambda config_uri: None)
    assert initialize_db.main(["examcache-initdb", str(path)]) == 0
    return str(path)


def pshell(ini: str, shell, setup: bool = True) -> None:
    argv = ["pshell", ini] + (["--setup", "pyramid_examcache.pshell.setup"] if setup else [])
    assert PShellCommand(argv, quiet=True).run(shell=shell) is None


def users(env) -> int:
    return env["request"].dbsession.scalar(select(func.count()).select_from(User))


def test_without_the_setup_the_session_has_no_transaction(ini):
    seen = []

    def shell(env, help):
        assert "tm" not in env and "cache" not in env
        with pytest.raises(NoTransaction):
            users(env)
        seen.append(get_policy(env["registry"]))

    pshell(ini, shell, setup=False)
    assert len(seen) == 1
    seen[0].close()


def test_the_setup_gives_tm_cache_and_mailer(ini):
    seen: dict = {}

    def shell(env, help):
        for name in ("tm", "cache", "mailer"):
            assert name in env and re.search(rf"^  {name} ", help, flags=re.M), name
        assert users(env) == 1  # the session works: a transaction is open
        job = env["mailer"].send_queued("a@example.com", "Hi", "<p>hi</p>")
        assert env["mailer"].job_status(job.id)["state"] == "waiting"  # read in it
        env["cache"].set("pshell:k", [1])
        assert env["cache"].get("pshell:k") is None  # after the commit
        env["tm"].commit()
        assert env["cache"].get("pshell:k") == [1]
        assert env["mailer"].job_status(job.id)["state"] == "waiting"  # committed
        env["tm"].begin()
        left = env["mailer"].send_queued("b@example.com", "Hi", "<p>hi</p>")
        env["cache"].set("pshell:k", [2])  # left uncommitted: aborted at exit
        seen.update(policy=get_policy(env["registry"]), job=job.id, left=left.id)

    pshell(ini, shell)
    assert seen["policy"].get("pshell:k") == [1]
    seen["policy"].close()
    after = bootstrap(ini)
    try:
        mailer = after["request"].mailer
        assert mailer.job_status(seen["job"])["state"] == "waiting"
        assert mailer.job_status(seen["left"]) is None
    finally:
        after["closer"]()
        get_policy(after["registry"]).close()
