"""The compatibility matrix's fast subset (tests/test_compat_matrix.py runs it in each
combination's virtual environment, outside the working tree): one pass over the API surface
the package uses of each dependency, on the installed wheel. Standalone: the package and its
dependencies only, SQLite files, the Redis server given, WSGI requests made with
``Request.blank``.

    python compat_smoke.py REDIS_URL KEY_PREFIX WORKDIR

- Pyramid: ``config.include`` after pyramid_tm, the ``cache=`` view deriver, two apps (two
  "processes", each with its own near cache in ``lease`` mode) on one Redis;
- redis-py (with or without hiredis): MISS then HIT, the other app's near cache, the
  tracking connection that tells it of an invalidation;
- SQLAlchemy + zope.sqlalchemy: ``pyramid_examcache.register`` and the commit-time
  invalidation of an ORM update (an aborted one invalidates nothing), the outbox and the
  invalidation log tables;
- Huey: ``request.mailer.send_queued`` enqueues at commit, the ``examcache-consumer``
  script consumes it and the job ends ``completed`` with its ``.eml`` written.

Prints ``ok <check>`` per check and ``COMPAT OK`` at the end; any failure exits non-zero."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.request import Request
from sqlalchemy import Column, Integer, create_engine
from sqlalchemy.orm import declarative_base, sessionmaker

import pyramid_examcache

Base = declarative_base()


class Item(Base):
    __tablename__ = "compat_item"
    __cache_keys__ = ("item:{id}",)
    __cache_tags__ = ()
    id = Column(Integer, primary_key=True)
    version = Column(Integer, nullable=False, default=0)


def item_view(request):
    return {"version": request.dbsession.get(Item, int(request.matchdict["id"])).version}


def update_view(request):
    request.dbsession.get(Item, int(request.matchdict["id"])).version = int(request.params["v"])
    if request.params.get("fail"):
        request.dbsession.flush()
        raise RuntimeError("abort after the write, on purpose")
    return {"ok": True}


def mail_view(request):
    return {"job": request.mailer.send_queued("ann@example.com", "Compat", "<p>hi</p>").id}


def job_view(request):
    return request.mailer.job_status(request.matchdict["job"]) or {}


def settings(redis_url: str, prefix: str, work: Path) -> dict[str, str]:
    return {"sqlalchemy.url": f"sqlite:///{work}/app.sqlite", "examcache.redis_url": redis_url,
            "examcache.key_prefix": prefix, "examcache.near_cache": "lease",
            "mail.queue_url": f"sqlite:///{work}/huey.sqlite", "mail.transport": "file",
            "mail.file_dir": str(work / "mail"), "mail.relay_interval": "1"}


def make_app(values: dict[str, str]):
    factory = sessionmaker(bind=create_engine(values["sqlalchemy.url"]))

    def dbsession(request):
        session = factory(info={"request": request})
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        pyramid_examcache.register(session, request)
        return session

    config = Configurator(settings=values)
    config.include("pyramid_tm")
    config.add_request_method(dbsession, "dbsession", reify=True)
    config.include("pyramid_examcache")
    config.add_route("item", "/items/{id}")
    config.add_view(item_view, route_name="item", renderer="json", request_method="GET",
                    cache="item:{id}", cache_public=True)
    config.add_view(update_view, route_name="item", renderer="json", request_method="PUT")
    config.add_route("mail", "/mail")
    config.add_view(mail_view, route_name="mail", renderer="json", request_method="POST")
    config.add_route("job", "/jobs/{job}")
    config.add_view(job_view, route_name="job", renderer="json")
    return config.make_wsgi_app()


def call(app, path: str, method: str = "GET", status: int = 200):
    response = Request.blank(path, method=method).get_response(app)
    assert response.status_code == status, (method, path, response.status, response.text[:2000])
    return response


def expect(app, path: str, cache: str, version: int) -> None:
    response = call(app, path)
    got = (response.headers.get("X-Cache"), response.json["version"])
    assert got == (cache, version), f"GET {path}: {got}, expected {(cache, version)}"


def eventually(check: Callable[[], bool], what: Callable[[], str],
               timeout: float = 300.0, pause: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not after {timeout}s: {what()}"
        time.sleep(pause)


def create_tables(values: dict[str, str]) -> None:
    from pyramid_examcache.cache.invalidation_log import metadata as log_metadata
    from pyramid_examcache.mail.outbox import metadata as outbox_metadata

    engine = create_engine(values["sqlalchemy.url"])
    for metadata in (Base.metadata, outbox_metadata, log_metadata):
        metadata.create_all(engine)
    with sessionmaker(bind=engine)() as session:
        session.add(Item(id=1, version=1))
        session.commit()
    engine.dispose()


def check_cache(one, two) -> None:
    expect(one, "/items/1", "MISS", 1)
    # a fill may be given up under load (fail-open: the next read fills): read until a HIT,
    # never a version other than 1 (a busy CI machine once gave MISS here)
    seen: list = []
    eventually(lambda: seen.append(call(one, "/items/1")) or
               (seen[-1].headers.get("X-Cache"), seen[-1].json["version"]) == ("HIT", 1),
               lambda: f"{[(r.headers.get('X-Cache'), r.json['version']) for r in seen[-5:]]}",
               timeout=60)
    assert {r.json["version"] for r in seen} == {1}
    expect(two, "/items/1", "HIT", 1)  # from Redis, then from its near cache
    expect(two, "/items/1", "HIT", 1)
    print("ok cached view (include, view deriver, Redis, near cache)")
    try:
        call(one, "/items/1?v=9&fail=1", "PUT")
    except RuntimeError:
        pass  # the view raised after its write: pyramid_tm aborted
    else:
        raise AssertionError("PUT fail=1 did not raise")
    expect(two, "/items/1", "HIT", 1)
    call(one, "/items/1?v=2", "PUT")
    expect(one, "/items/1", "MISS", 2)
    # the other app learns of it through its tracking connection (lease mode: at once)
    expect(two, "/items/1", "HIT", 2)
    print("ok commit-time invalidation (register, zope.sqlalchemy, tracking)")


LOGGING = """[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = INFO
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[formatter_generic]
format = %(asctime)s %(levelname)s [%(name)s] %(message)s
"""


def write_ini(values: dict[str, str], work: Path) -> Path:
    ini = work / "consumer.ini"
    body = "\n".join(f"{k} = {v}" for k, v in values.items())
    ini.write_text(f"[app:main]\nuse = egg:pyramid_examcache\n{body}\n\n{LOGGING}")
    return ini


def consumer_log(work: Path) -> str:
    return "the consumer's log:\n" + (work / "consumer.log").read_text()[-6000:]


def check_mail(app, values: dict[str, str], work: Path) -> None:
    job = call(app, "/mail", "POST").json["job"]
    assert call(app, f"/jobs/{job}").json["state"] == "waiting"
    consumer = Path(sys.executable).parent / "examcache-consumer"
    log = (work / "consumer.log").open("wb")
    # PYTHONFAULTHANDLER: a consumer that hangs prints its threads' stacks on SIGABRT
    proc = subprocess.Popen([str(consumer), str(write_ini(values, work))], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    try:
        # the .eml first: polling the job would hold SQLite's lock against the consumer
        eventually(lambda: any((work / "mail").glob("*.eml")) or proc.poll() is not None,
                   lambda: f"the consumer delivers the mail: {consumer_log(work)}")
        eventually(lambda: call(app, f"/jobs/{job}").json["state"] == "completed"
                   or proc.poll() is not None,
                   lambda: f"the job completes: {consumer_log(work)}", pause=0.25)
        state = call(app, f"/jobs/{job}").json["state"]
        assert state == "completed", (state, consumer_log(work))
        mails = list((work / "mail").glob("*.eml"))
        assert len(mails) == 1 and "Subject: Compat" in mails[0].read_text(), mails
    except AssertionError:
        proc.send_signal(signal.SIGABRT)
        proc.wait(30)
        raise AssertionError(f"the mail was not delivered: {consumer_log(work)}") from None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
    assert code == 0, (code, consumer_log(work))
    print("ok mail queued at commit, consumed by examcache-consumer (Huey)")


def main(argv: list[str]) -> int:
    redis_url, prefix, work = argv[0], argv[1], Path(argv[2])
    work.mkdir(parents=True, exist_ok=True)
    assert Path(pyramid_examcache.__file__).resolve().is_relative_to(
        Path(sys.prefix).resolve()), f"not the installed package: {pyramid_examcache.__file__}"
    values = settings(redis_url, prefix, work)
    create_tables(values)
    one, two = make_app(values), make_app(values)
    check_cache(one, two)
    check_mail(one, values, work)
    print("COMPAT OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
