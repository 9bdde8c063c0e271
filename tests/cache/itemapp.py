"""A small Pyramid app on a real database, used by the cache's functional,
concurrency and fail-open tests.  It is wired like a cookiecutter app
(pyramid_tm, zope.sqlalchemy, ``request.dbsession`` with the request in
``session.info``) and knows nothing of the tests.

Routes:
  GET  /items/{id}             cached view (``item:{id}``), optional slow loader
  GET  /naive/items/{id}       the seed's cache-aside: GET, json.loads, SETEX on miss
  PUT  /items/{id}?v=N         update through the ORM (auto invalidation); ``fail=1`` raises after the write
  PUT  /naive/items/{id}?v=N   update, commit, then DEL (naive)
  POST /items/{id}/write-then-read   writes, then reads ``item:{id}:copy`` via get_or_set
  POST /invalidate/{id}        explicit request.cache.invalidate (``fail=1`` aborts)

Run standalone (one of the processes of a multi-process test)::

  python -m tests.cache.itemapp --port P --db URL --redis URL --prefix PREFIX
"""
from __future__ import annotations

import argparse
import json
import time

import redis
import transaction
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPNotFound
from sqlalchemy import Column, Integer, String, create_engine, select
from sqlalchemy.orm import declarative_base, sessionmaker

from pyramid_examcache import register

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


def update_view(request):
    """The cookiecutter's way: change the object and return; zope.sqlalchemy
    flushes inside the commit (``flush=1`` flushes in the view instead)."""
    item = get_item(request)
    item.version = int(request.params["v"])
    if "payload" in request.params:
        item.payload = request.params["payload"]
    if request.params.get("flush") or request.params.get("fail"):
        request.dbsession.flush()
    if request.params.get("fail"):
        raise RuntimeError("failing after the write, on purpose")
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


def make_app(db_url: str, **settings):
    settings.setdefault("examcache.redis_url", "memory://")
    settings["sqlalchemy.url"] = db_url
    engine = create_engine(db_url, pool_size=20, max_overflow=20)
    factory = sessionmaker(bind=engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache.cache")

        def dbsession(request):
            session = factory()
            zope.sqlalchemy.register(session, transaction_manager=request.tm)
            register(session, request)
            return session

        config.add_request_method(dbsession, "dbsession", reify=True)
        redis_url = settings.get("test.redis_url") or settings["examcache.redis_url"]
        if redis_url.startswith("redis"):
            config.registry["test.redis"] = redis.Redis.from_url(redis_url)
        config.registry["test.engine"] = engine
        config.add_route("item", "/items/{id}")
        config.add_route("naive", "/naive/items/{id}")
        config.add_route("wtr", "/items/{id}/write-then-read")
        config.add_route("inv", "/invalidate/{id}")
        config.add_view(item_view, route_name="item", request_method="GET", renderer="json",
                        cache="item:{id}", cache_tags=("group:0",))
        config.add_view(update_view, route_name="item", request_method="PUT", renderer="json")
        config.add_view(naive_get, route_name="naive", request_method="GET", renderer="json")
        config.add_view(naive_put, route_name="naive", request_method="PUT", renderer="json")
        config.add_view(write_then_read, route_name="wtr", request_method="POST", renderer="json")
        config.add_view(invalidate_view, route_name="inv", request_method="POST", renderer="json")
        return config.make_wsgi_app()


def create_schema(db_url: str, n_items: int = 5) -> None:
    engine = create_engine(db_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
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
    args = parser.parse_args()
    app = make_app(args.db, **{"examcache.redis_url": args.redis, "examcache.key_prefix": args.prefix,
                               "test.load_delay": args.load_delay,
                               "test.load_counter": args.load_counter})
    import waitress

    waitress.serve(app, host="127.0.0.1", port=args.port, threads=args.threads,
                   connection_limit=1000, channel_timeout=60)


if __name__ == "__main__":
    main()
