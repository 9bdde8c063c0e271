"""Issue 18, finding 8: a job id is never returned for a mail that will not exist.

End to end (``examcache-consumer`` subprocess, PostgreSQL outbox, a private redis-server
queue, aiosmtpd) in the three ways an application queues mail:

1. a pyramid_tm app -- the row joins the request's transaction: commit delivers, abort
   never does (M1);
2. a ``bootstrap()`` script run as a real subprocess -- inside ``with request.tm:`` the
   row joins that transaction (commit delivers every job, an exception delivers none);
   with an explicit manager and no transaction begun, each row is committed before
   ``send_queued`` returns; ``job_status`` works outside a transaction too;
3. an app without pyramid_tm (a plain session nobody commits, or no session at all) --
   every returned job id has a committed row and is delivered.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
import transaction
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPNotFound
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from webtest import TestApp

from pyramid_examcache.mail.outbox import outbox_table

from .support import ConsumerProcess, make_app, wait_until, write_ini

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SENDER_DOMAIN = "exams.example"


# -- the applications (the bootstrap script loads them from an ini: ``use = call:``) -------

def script_app(global_config, **settings):
    """The cookiecutter's shape: pyramid_tm, ``request.dbsession`` joined to ``request.tm``
    (``tm.manager_hook`` from the ini: an explicit manager unless it names another)."""
    return make_app(settings["sqlalchemy.url"], settings)


def thread_manager(request):
    """pyramid_tm's default when ``tm.manager_hook`` is unset: the thread's implicit manager."""
    return transaction.manager


def plain_app(db_url: str, settings: dict, *, with_session: bool = True):
    """No pyramid_tm: ``request.dbsession`` is a plain Session that nobody ever commits
    (closed when the request ends), or there is no session at all."""
    engine = create_engine(db_url)
    config = Configurator(settings={"sqlalchemy.url": db_url, **settings})
    if with_session:
        def dbsession(request):
            session = Session(bind=engine)
            request.add_finished_callback(lambda r: session.close())
            return session

        config.add_request_method(dbsession, "dbsession", reify=True)
    config.include("pyramid_examcache.mail")

    def send(request):
        job = request.mailer.send_queued(request.json_body["to"], "Reminder", "<p>due</p>")
        if request.json_body.get("fail"):
            raise RuntimeError("boom after send_queued")
        return {"jobId": job.id}

    def job(request):
        status = request.mailer.job_status(request.matchdict["job_id"])
        if status is None:
            raise HTTPNotFound()
        return status

    config.add_route("send", "/send")
    config.add_route("job", "/jobs/{job_id}")
    config.add_view(send, route_name="send", renderer="json", request_method="POST")
    config.add_view(job, route_name="job", renderer="json")
    app = config.make_wsgi_app()
    app.engine = engine
    return app


SCRIPT = textwrap.dedent("""\
    import json, sys
    from pyramid.paster import bootstrap, setup_logging

    ini, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    setup_logging(ini)
    ids, inside = [], []

    def status(request, job_id):
        try:
            return request.mailer.job_status(job_id)
        except Exception as exc:  # reported, so the test checks the rows first
            return f"{type(exc).__name__}: {exc}"

    def queue_all(request):
        for i in range(count):
            job = request.mailer.send_queued(f"{mode}{i}@example.com", f"Digest {i}",
                                             f"<p>digest {i}</p>")
            ids.append(job.id)
            inside.append(status(request, job.id))

    with bootstrap(ini) as env:
        request = env["request"]
        if mode == "commit":
            with request.tm:
                queue_all(request)
        elif mode == "abort":
            try:
                with request.tm:
                    queue_all(request)
                    raise RuntimeError("the digest run failed")
            except RuntimeError:
                pass
        else:  # "none": no transaction begun
            queue_all(request)
        # after the block, as in pshell: no transaction, yet job_status answers
        after = [status(request, job_id) for job_id in ids]
    print(json.dumps({"ids": ids, "inside": inside, "after": after}))
""")


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture
def mail_settings(smtp_server, private_redis, pg_url):
    return {
        "sqlalchemy.url": pg_url,
        "mail.transport": "smtp",
        "mail.host": "127.0.0.1",
        "mail.port": str(smtp_server.port),
        "mail.default_sender": f"no-reply@{SENDER_DOMAIN}",
        "mail.queue_url": private_redis.url,
        "mail.queue_name": f"modes-{uuid.uuid4().hex[:8]}",
        "mail.relay_interval": "1",
        "mail.workers": "2",
        "mail.shutdown_timeout": "5",
    }


@pytest.fixture
def consumer(db, mail_settings, tmp_path):
    proc = ConsumerProcess(write_ini(str(tmp_path / "consumer.ini"), mail_settings),
                           str(tmp_path / "consumer.log"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def run_script(db, mail_settings, tmp_path):
    """Run the bootstrap script as users do (``python script.py app.ini``) in a subprocess."""
    script = tmp_path / "digest.py"
    script.write_text(SCRIPT)

    def run(mode: str, count: int, manager_hook: str = "pyramid_tm.explicit_manager") -> dict:
        ini = write_ini(str(tmp_path / f"script-{mode}.ini"),
                        {**mail_settings, "tm.manager_hook": manager_hook})
        with open(ini) as fh:
            text = fh.read().replace("use = egg:examcache_demo",
                                     f"use = call:{__name__}:script_app")
        with open(ini, "w") as fh:
            fh.write(text)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [REPO, *filter(None, [os.environ.get("PYTHONPATH")])])}
        out = subprocess.run([sys.executable, str(script), ini, mode, str(count)],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    return run


# -- helpers ------------------------------------------------------------------------------

def message_id(job_id: str) -> str:
    return f"<{job_id}@{SENDER_DOMAIN}>"


def field(statuses: list, name: str) -> list:
    """``name`` of each job_status the script printed (an error's text, None, as is)."""
    return [s[name] if isinstance(s, dict) else s for s in statuses]


def rows(engine, ids) -> dict[str, str]:
    """``{job id: state}`` of the committed outbox rows among ``ids``."""
    with engine.connect() as conn:
        found = conn.execute(select(outbox_table.c.id, outbox_table.c.state)
                             .where(outbox_table.c.id.in_(list(ids)))).all()
    return dict(found)


def wait_delivered(smtp_server, ids, timeout: float = 30.0) -> None:
    expected = {message_id(j) for j in ids}
    wait_until(lambda: expected <= set(smtp_server.accepted_ids()), timeout=timeout,
               message=f"{len(expected)} mails delivered")


def assert_never_delivered(smtp_server, consumer, ids, marker) -> None:
    """``ids`` were never delivered: a mail queued later (``marker``) has arrived and two
    more relay rounds ran (a row to relay would have been pushed by then)."""
    wait_delivered(smtp_server, [marker])
    consumer.wait_for_rounds(2)
    assert not {message_id(j) for j in ids} & set(smtp_server.accepted_ids())


# -- 1. a pyramid_tm app --------------------------------------------------------------------

def test_pyramid_tm_request_commit_delivers_abort_never(db, pg_url, mail_settings, consumer,
                                                        smtp_server):
    """M1: the row joins the request's transaction (pyramid_tm, explicit manager)."""
    testapp = TestApp(make_app(pg_url, mail_settings, engine=db))
    for i in range(3):
        with pytest.raises(RuntimeError, match="boom"):
            testapp.post_json("/register", {"email": f"gone{i}@example.com", "fail": True})
    # the view raised after send_queued: no row, so nothing the relay could ever push
    with db.connect() as conn:
        aborted = conn.execute(select(outbox_table.c.id)).scalars().all()
    assert aborted == []
    committed = [testapp.post_json("/register", {"email": f"kept{i}@example.com"},
                                   status=201).json["jobId"] for i in range(3)]
    wait_delivered(smtp_server, committed)
    consumer.wait_for_rounds(2)
    assert sorted(smtp_server.accepted_ids()) == sorted(message_id(j) for j in committed)
    assert {m["To"] for m in smtp_server.handler.accepted} == {
        f"kept{i}@example.com" for i in range(3)}
    for job_id in committed:
        assert testapp.get(f"/jobs/{job_id}").json["state"] == "completed"


# -- 2. a bootstrap script ------------------------------------------------------------------

MANAGERS = {"explicit": "pyramid_tm.explicit_manager", "thread": f"{__name__}.thread_manager"}


@pytest.mark.parametrize("manager", sorted(MANAGERS))
def test_bootstrap_script_inside_request_tm_delivers_every_job(run_script, consumer, smtp_server,
                                                               db, manager):
    """``with env['request'].tm:`` in a bootstrap script: 20 job ids, 20 committed rows,
    20 mails at the SMTP sink. Before: 20 ids, 0 rows (``tm.active`` is never set there)."""
    out = run_script("commit", 20, MANAGERS[manager])
    ids = out["ids"]
    assert len(set(ids)) == 20
    assert len(rows(db, ids)) == 20, "job ids returned for rows that do not exist"
    # inside the block the session sees its own row; after it, a connection of its own does
    assert field(out["inside"], "state") == ["waiting"] * 20
    assert field(out["after"], "id") == ids
    wait_delivered(smtp_server, ids)
    wait_until(lambda: set(rows(db, ids).values()) == {"completed"}, message="all completed")
    assert sorted(smtp_server.accepted_ids()) == sorted(message_id(j) for j in ids)


@pytest.mark.parametrize("manager", sorted(MANAGERS))
def test_bootstrap_script_aborted_block_delivers_nothing(run_script, consumer, smtp_server, db,
                                                         manager):
    """An exception inside ``with request.tm:`` aborts the rows with the block: none is
    written, none is delivered, and ``job_status`` (outside a transaction) says unknown."""
    out = run_script("abort", 5, MANAGERS[manager])
    assert len(out["ids"]) == 5
    assert rows(db, out["ids"]) == {}
    assert field(out["inside"], "state") == ["waiting"] * 5  # they existed in the block
    assert out["after"] == [None] * 5
    marker = run_script("commit", 1, MANAGERS[manager])["ids"][0]
    assert_never_delivered(smtp_server, consumer, out["ids"], marker)


def test_bootstrap_script_without_a_transaction_commits_each_row_before_returning(
        run_script, consumer, smtp_server, db):
    """An explicit manager and no ``with request.tm:``: ``send_queued`` commits its row in
    a transaction of its own before it returns the id (``job_status`` on a fresh connection
    sees it at once), and every mail is delivered. ``job_status`` raises no NoTransaction."""
    out = run_script("none", 10)
    ids = out["ids"]
    assert len(rows(db, ids)) == 10, "job ids returned for rows that do not exist"
    assert field(out["inside"], "id") == ids
    assert field(out["after"], "id") == ids
    wait_delivered(smtp_server, ids)
    assert sorted(smtp_server.accepted_ids()) == sorted(message_id(j) for j in ids)


# -- 3. no pyramid_tm -------------------------------------------------------------------------

@pytest.mark.parametrize("with_session", [True, False], ids=["plain-session", "no-session"])
def test_without_pyramid_tm_every_returned_job_is_delivered(db, pg_url, mail_settings, consumer,
                                                            smtp_server, with_session):
    """No pyramid_tm (a plain session nobody commits, or none): each row is committed
    before the view returns the id -- even when the view raises afterwards (nothing to
    abort it with: documented) -- and every mail arrives."""
    app = plain_app(pg_url, mail_settings, with_session=with_session)
    testapp = TestApp(app)
    ids = []
    for i in range(5):
        job_id = testapp.post_json("/send", {"to": f"p{i}@example.com"}).json["jobId"]
        assert job_id in rows(db, [job_id])  # committed when the response left
        ids.append(job_id)
    with pytest.raises(RuntimeError, match="boom"):
        testapp.post_json("/send", {"to": "raised@example.com", "fail": True})
    wait_delivered(smtp_server, ids)
    wait_until(lambda: len(smtp_server.handler.accepted) == 6, message="the 6th mail")
    assert "raised@example.com" in {m["To"] for m in smtp_server.handler.accepted}
    for job_id in ids:
        wait_until(lambda: testapp.get(f"/jobs/{job_id}").json["state"] == "completed",
                   message=f"{job_id} completed")
    app.engine.dispose()


# -- pshell: retry, cancel and job_status on an explicit manager with nothing begun ---------

def test_pshell_retry_cancel_and_status_without_a_transaction_apply_at_once(db, pg_url):
    """pshell's request (``prepare()``): ``request.tm`` is explicit and no transaction is
    begun. ``retry`` and ``cancel`` commit at once (retry pushes: the job is delivered in
    process), ``job_status`` reads on its own connection -- no ``NoTransaction``."""
    from pyramid.scripting import prepare
    from transaction.interfaces import NoTransaction

    from pyramid_examcache.mail.outbox import new_row, utcnow
    from pyramid_examcache.testing import get_mail_capture

    app = make_app(pg_url, {}, engine=db,
                   extra=lambda config: config.include("pyramid_examcache.testing"))
    now = utcnow()
    with db.begin() as conn:
        for job_id, state in (("failedjob", "failed"), ("waitingjob", "waiting")):
            values = new_row(job_id, f"<{job_id}@localhost>", "no-reply@localhost",
                             {"to": [f"{job_id}@example.com"]}, "S", "<p>b</p>", None, {}, now)
            conn.execute(outbox_table.insert().values({**values, "state": state,
                                                       "enqueued_at": now}))
    env = prepare(registry=app.registry)
    request = env["request"]
    try:
        with pytest.raises(NoTransaction):
            request.tm.get()
        assert request.mailer.job_status("waitingjob")["state"] == "waiting"
        assert request.mailer.retry("waitingjob") is False  # not failed: nothing changes
        assert request.mailer.retry("failedjob") is True
        assert request.mailer.cancel("waitingjob") is True
        assert request.mailer.cancel("nosuchjob") is False
    finally:
        env["closer"]()
    assert rows(db, ["failedjob", "waitingjob"]) == {"failedjob": "completed",
                                                      "waitingjob": "failed"}
    assert [m.to for m in get_mail_capture(app).outbox] == [["failedjob@example.com"]]
