"""A small Pyramid app on a real database, used by the cache's functional,
concurrency and fail-open tests.  It is wired like a cookiecutter app
(pyramid_tm, zope.sqlalchemy, ``request.dbsession`` with the request in
``session.info``) and knows nothing of the tests.

Routes:
  GET  /items/{id}             cached view (``item:{id}``), optional slow loader;
                               ``cache_public=True`` with the setting ``test.cache_public = true``
  GET  /naive/items/{id}       the seed's cache-aside: GET, json.loads, SETEX on miss
  PUT  /items/{id}?v=N         update through the ORM (auto invalidation); ``fail=1`` raises after the write
  PUT  /naive/items/{id}?v=N   update, commit, then DEL (naive)
  POST /items/{id}/write-then-read   writes, then reads ``item:{id}:copy`` via get_or_set
  POST /invalidate/{id}        explicit request.cache.invalidate (``fail=1`` aborts)

With the setting ``test.kill_after_commit = true`` the process SIGKILLs itself right after
the database COMMIT of a session that wrote (SQLAlchemy ``after_commit``), before the
cache invalidation that follows the commit.

Run standalone (one of the processes of a multi-process test)::

  python -m tests.cache.itemapp --port P --db URL --redis URL --prefix PREFIX
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import time

import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPNotFound
import pyramid_retry
from sqlalchemy import Column, Integer, String, create_engine, event, select, text, update
from sqlalchemy.orm import declarative_base, sessionmaker

from pyramid_examcache import register
from pyramid_examcache.topology import client_for
from pyramid_examcache.cache.invalidation_log import metadata as log_metadata

Base = declarative_base()


class Item(Base):
    __tablename__ = "cache_test_item"
    __cache_keys__ = ("item:{id}",)
    __cache_tags__ = ("group:{grp}",)
    id = Column(Integer, primary_key=True)
    grp = Column(Integer, nullable=False, default=0)
    version = Column(Integer, nullable=False, default=0)
    payload = Column(String, nullable=False, default="")


def item_json(item: Item) -> dict:
    return {"id": item.id, "version": item.version, "payload": item.payload}


def get_item(request) -> Item:
    item = request.dbsession.get(Item, int(request.matchdict["id"]))
    if item is None:
        raise HTTPNotFound()
    return item


def _slow(request) -> None:
    delay = float(request.registry.settings.get("test.load_delay", 0))
    if delay:
        time.sleep(delay)


def count_load(request) -> None:
    counter = request.registry.settings.get("test.load_counter")
    if counter:
        request.registry["test.redis"].incr(counter)


def item_view(request):
    count_load(request)
    item = get_item(request)
    data = item_json(item)
    _slow(request)
    return data


class SlowVote:
    """A second transaction resource whose vote sleeps: it votes before
    zope.sqlalchemy's (which sorts last and COMMITs in its own vote), so the
    database COMMIT comes ``delay`` seconds after the flush in ``tpc_begin``."""

    transaction_manager = None

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def abort(self, txn): pass
    def tpc_begin(self, txn): pass
    def commit(self, txn): pass
    def tpc_vote(self, txn): time.sleep(self.delay)
    def tpc_finish(self, txn): pass
    def tpc_abort(self, txn): pass
    def sortKey(self): return "0-slow-vote"


def _maybe_slow_commit(request) -> None:
    delay = float(request.params.get("delay", 0))
    if delay:
        request.tm.get().join(SlowVote(delay))


def update_view(request):
    """The cookiecutter's way: change the object and return; zope.sqlalchemy
    flushes inside the commit (``flush=1`` flushes in the view instead)."""
    _maybe_slow_commit(request)
    item = get_item(request)
    item.version = int(request.params["v"])
    if "payload" in request.params:
        item.payload = request.params["payload"]
    if request.params.get("flush") or request.params.get("fail"):
        request.dbsession.flush()
    if request.params.get("fail"):
        raise RuntimeError("failing after the write, on purpose")
    return item_json(item)


def savepoint_update(request):
    item = get_item(request)
    savepoint = request.dbsession.begin_nested()
    item.version = int(request.params["v"])
    request.dbsession.flush()
    if request.params.get("keep"):
        savepoint.commit()
    else:
        savepoint.rollback()
    return item_json(get_item(request))


def bulk_update(request):
    _maybe_slow_commit(request)
    item_id = int(request.matchdict["id"])
    request.dbsession.execute(update(Item).where(Item.id == item_id)
                              .values(version=int(request.params["v"])))
    request.cache.invalidate(f"item:{item_id}")
    return {"id": item_id, "version": int(request.params["v"])}


def text_update(request):
    _maybe_slow_commit(request)
    item_id = int(request.matchdict["id"])
    request.dbsession.execute(text("UPDATE cache_test_item SET version = :v WHERE id = :id"),
                              {"v": int(request.params["v"]), "id": item_id})
    zope.sqlalchemy.mark_changed(request.dbsession, transaction_manager=request.tm)
    request.cache.invalidate(f"item:{item_id}")
    return {"id": item_id, "version": int(request.params["v"])}


class Conflict(Exception):
    """A retryable failure (what a serialization failure is to pyramid_retry)."""


pyramid_retry.mark_error_retryable(Conflict)


def retried_update(request):
    _maybe_slow_commit(request)
    item = get_item(request)
    item.version = int(request.params["v"])
    request.dbsession.flush()
    if request.environ["retry.attempt"] == 0:  # the first attempt wrote, then conflicts
        item.version = -1
        request.dbsession.flush()
        raise Conflict("conflict on the first attempt")
    return item_json(item)


def write_then_read(request):
    item = get_item(request)
    item.version = int(request.params["v"])
    request.dbsession.flush()
    key = f"item:{item.id}:copy"
    return request.cache.get_or_set(key, lambda: item_json(get_item(request)))


def invalidate_view(request):
    request.cache.invalidate(f"item:{request.matchdict['id']}")
    if request.params.get("fail"):
        raise RuntimeError("abort after invalidate, on purpose")
    return {"ok": True}


# -- the seed's cache-aside, for the race-detection control ----------------------
def naive_get(request):
    r = request.registry["test.redis"]
    key = request.registry.settings["examcache.key_prefix"] + "naive:" + request.matchdict["id"]
    raw = r.get(key)
    if raw is not None:
        return json.loads(raw)
    item = get_item(request)
    data = item_json(item)
    _slow(request)
    r.set(key, json.dumps(data), ex=3600)  # the seed: SETEX on miss
    return data


def naive_put(request):
    item = get_item(request)
    item.version = int(request.params["v"])
    request.tm.commit()
    request.tm.begin()
    r = request.registry["test.redis"]
    r.delete(request.registry.settings["examcache.key_prefix"] + "naive:" + request.matchdict["id"])
    return {"id": int(request.matchdict["id"]), "version": int(request.params["v"])}


def _kill_after_commit(session) -> None:
    """Die between the COMMIT of a session that wrote and the invalidation after it."""
    event.listen(session, "after_flush",
                 lambda s, _ctx: s.info.__setitem__("test.wrote", True))
    event.listen(session, "after_commit",
                 lambda s: s.info.get("test.wrote") and os.kill(os.getpid(), signal.SIGKILL))


def make_app(db_url: str, **settings):
    settings.setdefault("examcache.redis_url", "memory://")
    settings["sqlalchemy.url"] = db_url
    settings.setdefault("retry.attempts", "3")
    engine = create_engine(db_url, pool_size=20, max_overflow=20)
    factory = sessionmaker(bind=engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_retry")
        config.include("pyramid_tm")
        config.include("pyramid_examcache.cache")
        config.include("pyramid_examcache.metrics")  # only with examcache.metrics_path

        def dbsession(request):
            session = factory()
            zope.sqlalchemy.register(session, transaction_manager=request.tm)
            register(session, request)
            if settings.get("test.kill_after_commit") == "true":
                _kill_after_commit(session)
            return session

        config.add_request_method(dbsession, "dbsession", reify=True)
        redis_url = settings.get("test.redis_url") or settings["examcache.redis_url"]
        if redis_url.startswith("redis"):  # any topology (redis+sentinel://, redis+cluster://)
            config.registry["test.redis"] = client_for(redis_url)
        config.registry["test.engine"] = engine
        config.add_route("item", "/items/{id}")
        config.add_route("naive", "/naive/items/{id}")
        config.add_route("wtr", "/items/{id}/write-then-read")
        config.add_route("inv", "/invalidate/{id}")
        config.add_route("savepoint", "/savepoint/items/{id}")
        config.add_route("bulk", "/bulk/items/{id}")
        config.add_route("text", "/text/items/{id}")
        config.add_route("retried", "/retry/items/{id}")
        config.add_view(savepoint_update, route_name="savepoint", request_method="PUT",
                        renderer="json")
        config.add_view(bulk_update, route_name="bulk", request_method="PUT", renderer="json")
        config.add_view(text_update, route_name="text", request_method="PUT", renderer="json")
        config.add_view(retried_update, route_name="retried", request_method="PUT",
                        renderer="json")
        config.add_view(item_view, route_name="item", request_method="GET", renderer="json",
                        cache="item:{id}", cache_tags=("group:0",),
                        cache_public=settings.get("test.cache_public") == "true")
        config.add_view(update_view, route_name="item", request_method="PUT", renderer="json")
        config.add_view(naive_get, route_name="naive", request_method="GET", renderer="json")
        config.add_view(naive_put, route_name="naive", request_method="PUT", renderer="json")
        config.add_view(write_then_read, route_name="wtr", request_method="POST", renderer="json")
        config.add_view(invalidate_view, route_name="inv", request_method="POST", renderer="json")
        app = config.make_wsgi_app()
    late = float(settings.get("test.late_messages", 0))
    if late:
        apply_messages_late(app.registry, late)
    if settings.get("test.fast_path") == "true":  # hits served by the WSGI fast path
        from pyramid_examcache import fast_path

        return fast_path(app)
    return app


def apply_messages_late(registry, seconds: float) -> None:
    """Each invalidation message of the tracked near cache applied ``seconds`` late, on the
    stream's reader thread (a busy process, on any topology: the slow-link race's fault
    where no proxy can stand between the process and a Cluster's or Sentinel's nodes)."""
    from pyramid_examcache.cache import get_policy

    backend = get_policy(registry).backend
    near = getattr(backend, "_tracked_near", None) or backend._near
    apply = near.tracked.on_keys

    def slowly(keys):
        time.sleep(seconds)
        apply(keys)
    near.tracked.on_keys = slowly


def create_schema(db_url: str, n_items: int = 5) -> None:
    engine = create_engine(db_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    log_metadata.drop_all(engine)
    log_metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(Item.__table__.insert(), [{"id": i, "grp": 0, "version": 0, "payload": ""}
                                               for i in range(1, n_items + 1)])
    engine.dispose()


def db_version(db_url: str, item_id: int) -> int:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        v = conn.execute(select(Item.version).where(Item.id == item_id)).scalar_one()
    engine.dispose()
    return v


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--load-delay", default="0")
    parser.add_argument("--load-counter", default="")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--setting", action="append", default=[], help="key=value")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.setting)
    if os.environ.get("EXAMCACHE_TEST_LATE_MESSAGES"):  # (one process of a race: env)
        extra["test.late_messages"] = os.environ["EXAMCACHE_TEST_LATE_MESSAGES"]
    app = make_app(args.db, **{"examcache.redis_url": args.redis, "examcache.key_prefix": args.prefix,
                               "test.load_delay": args.load_delay,
                               "test.load_counter": args.load_counter, **extra})
    import waitress

    waitress.serve(app, host="127.0.0.1", port=args.port, threads=args.threads,
                   connection_limit=1000, channel_timeout=60)


if __name__ == "__main__":
    main()
