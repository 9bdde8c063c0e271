"""A forgotten ``pyramid_examcache.register()`` is never silent (issue 18, finding 4).

A real app (pyramid_tm, zope.sqlalchemy, ``config.include('pyramid_examcache')``) on a
SQLite file, driven through WebTest with requests that really commit. Its views write
the way users write them: change an attribute and return, zope.sqlalchemy flushes
inside the commit. ``test.register = true`` registers the request's session with
``pyramid_examcache.register``; otherwise it is only registered with zope.sqlalchemy.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zope.sqlalchemy
from pyramid.config import Configurator
from sqlalchemy import Column, Integer, String, create_engine, insert, select, update
from sqlalchemy.orm import declarative_base, sessionmaker
from webtest import TestApp

import pyramid_examcache
from pyramid_examcache.cache.orm import UnregisteredSession

Base = declarative_base()
LOGGER = "pyramid_examcache.cache.orm"
ROOT = Path(__file__).resolve().parents[2]


class Note(Base):
    __tablename__ = "registration_note"
    __cache_keys__ = ("note:{id}",)
    id = Column(Integer, primary_key=True)
    text = Column(String, nullable=False)


class Visit(Base):  # no __cache_keys__: nothing to invalidate, nothing to warn about
    __tablename__ = "registration_visit"
    id = Column(Integer, primary_key=True)
    count = Column(Integer, nullable=False, default=0)


def note_view(request):
    note_id = int(request.matchdict["id"])

    def load():
        return request.dbsession.get(Note, note_id).text

    return {"text": request.cache.get_or_set(f"note:{note_id}", load)}


def update_note(request):
    note = request.dbsession.get(Note, int(request.matchdict["id"]))
    note.text = request.params["text"]
    if "again" in request.params:  # a second flush of the same session
        request.dbsession.flush()
        note.text = request.params["again"]
    return {"ok": True}  # no flush: zope.sqlalchemy flushes at commit


def bulk_update_note(request):
    request.dbsession.execute(update(Note).where(Note.id == int(request.matchdict["id"]))
                              .values(text=request.params["text"]))
    return {"ok": True}


def count_visit(request):
    visit = request.dbsession.get(Visit, int(request.matchdict["id"]))
    visit.count += 1
    request.dbsession.add(Visit(count=0))
    return {"ok": True}


def make_app(tmp_path, name: str, **settings: str) -> tuple[TestApp, str]:
    """The app and its database URL; rows note 1 ("v0") and visit 1 exist."""
    db_url = f"sqlite:///{tmp_path}/{name}.sqlite"
    engine = create_engine(db_url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:  # Core, not a session: the seed is no forgotten register()
        conn.execute(insert(Note), [{"id": 1, "text": "v0"}])
        conn.execute(insert(Visit), [{"id": 1, "count": 0}])
    settings = {"examcache.redis_url": "memory://", "sqlalchemy.url": db_url,
                "mail.queue_url": f"sqlite:///{tmp_path}/{name}-huey.sqlite",
                "mail.file_dir": str(tmp_path / "mail"), **settings}
    factory = sessionmaker(bind=engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")

        def dbsession(request):
            session = factory()
            zope.sqlalchemy.register(session, transaction_manager=request.tm)
            if request.registry.settings.get("test.register") == "true":
                pyramid_examcache.register(session, request)
            return session

        config.add_request_method(dbsession, reify=True)
        for route, path, view, method in (
                ("note", "/notes/{id}", note_view, "GET"),
                ("update", "/notes/{id}", update_note, "PUT"),
                ("bulk", "/notes/{id}/bulk", bulk_update_note, "POST"),
                ("visit", "/visits/{id}", count_visit, "POST")):
            config.add_route(route, path, request_method=method)
            config.add_view(view, route_name=route, renderer="json")
        app = config.make_wsgi_app()
    return TestApp(app), db_url


def stored_text(db_url: str) -> str:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        text = conn.execute(select(Note.text).where(Note.id == 1)).scalar_one()
    engine.dispose()
    return text


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


def test_an_unregistered_session_warns_once_per_session_naming_register_and_the_model(
        tmp_path, caplog):
    app, db_url = make_app(tmp_path, "lenient")
    assert app.get("/notes/1").json == {"text": "v0"}  # cached
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        app.put("/notes/1?text=v1&again=v2")  # two flushes of one session
        first = warnings_of(caplog)
        app.put("/notes/1?text=v3")  # a new request: a new session
    assert len(first) == 1, first
    assert "pyramid_examcache.register" in first[0]
    assert f"{__name__}.Note" in first[0]
    assert len(warnings_of(caplog)) == 2  # once per session, not once per flush or per app
    assert stored_text(db_url) == "v3"  # the writes commit...
    assert app.get("/notes/1").json == {"text": "v0"}  # ...and the cache is stale: the warning


def test_a_registered_session_is_not_warned_about_and_invalidates(tmp_path, caplog):
    app, db_url = make_app(tmp_path, "registered", **{"test.register": "true"})
    assert app.get("/notes/1").json == {"text": "v0"}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        app.put("/notes/1?text=v1&again=v2")
        app.post("/notes/1/bulk?text=v3")
    assert warnings_of(caplog) == []
    assert stored_text(db_url) == "v3"
    assert app.get("/notes/1").json == {"text": "v3"}


def test_a_session_writing_only_models_without_cache_keys_is_not_warned_about(tmp_path, caplog):
    app, _ = make_app(tmp_path, "plain")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        app.post("/visits/1")
        app.post("/visits/1")
    assert warnings_of(caplog) == []


def test_an_unregistered_bulk_update_of_a_declaring_model_is_warned_about(tmp_path, caplog):
    app, db_url = make_app(tmp_path, "bulk")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        app.post("/notes/1/bulk?text=b1")
    [message] = warnings_of(caplog)
    assert "pyramid_examcache.register" in message and f"{__name__}.Note" in message
    assert stored_text(db_url) == "b1"


def test_require_registration_fails_the_request_and_commits_nothing(tmp_path, caplog):
    app, db_url = make_app(tmp_path, "strict", **{"examcache.require_registration": "true"})
    assert app.get("/notes/1").json == {"text": "v0"}
    with pytest.raises(UnregisteredSession) as raised:
        app.put("/notes/1?text=v1")
    assert isinstance(raised.value, RuntimeError)
    assert "pyramid_examcache.register" in str(raised.value)
    assert f"{__name__}.Note" in str(raised.value)
    assert "examcache.require_registration" in str(raised.value)
    assert stored_text(db_url) == "v0"  # aborted: nothing committed
    with pytest.raises(UnregisteredSession):  # every such flush, not only the first
        app.put("/notes/1?text=v2")
    assert stored_text(db_url) == "v0"
    with caplog.at_level(logging.WARNING, logger=LOGGER):  # other writes are not affected
        app.post("/visits/1")
    assert warnings_of(caplog) == []


def test_require_registration_is_per_application(tmp_path, caplog):
    """Two apps in one process: each request is checked with its own app's setting."""
    strict, strict_db = make_app(tmp_path, "a", **{"examcache.require_registration": "true"})
    lenient, lenient_db = make_app(tmp_path, "b", **{"examcache.require_registration": "false"})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        lenient.put("/notes/1?text=l1")
        with pytest.raises(UnregisteredSession):
            strict.put("/notes/1?text=s1")
        lenient.put("/notes/1?text=l2")
    assert len(warnings_of(caplog)) == 2
    assert (stored_text(strict_db), stored_text(lenient_db)) == ("v0", "l2")


def test_outside_a_request_the_only_apps_setting_applies(tmp_path):
    """A process with one strict app: a session written outside any request (a thread,
    a script without bootstrap) is refused as well."""
    script = textwrap.dedent(f"""
        import pathlib
        from tests.cache.test_registration import Note, make_app
        from sqlalchemy import create_engine
        from sqlalchemy.orm import sessionmaker
        from pyramid_examcache.cache.orm import UnregisteredSession
        app, db_url = make_app(pathlib.Path({str(tmp_path)!r}), "script",
                               **{{"examcache.require_registration": "true"}})
        session = sessionmaker(bind=create_engine(db_url))()
        session.get(Note, 1).text = "outside"
        try:
            session.commit()
        except UnregisteredSession as exc:
            print("refused:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:") and "pyramid_examcache.register" in out.stdout
    assert stored_text(f"sqlite:///{tmp_path}/script.sqlite") == "v0"
