"""Models and the cookiecutter's session wiring.

``request.dbsession`` is a SQLAlchemy session bound to the request's
transaction manager (pyramid_tm + zope.sqlalchemy) and registered with
pyramid_examcache (``pyramid_examcache.register``), which invalidates the keys
the models declare once the database has committed.
"""
from __future__ import annotations

import math

import zope.sqlalchemy
from sqlalchemy import engine_from_config
from sqlalchemy.engine import make_url
from sqlalchemy.orm import configure_mappers, sessionmaker

from pyramid_examcache import register as register_cache

from .exam import Exam, Question
from .meta import Base
from .user import User

configure_mappers()

__all__ = ["Base", "User", "Exam", "Question", "get_engine", "get_session_factory",
           "get_tm_session", "includeme"]


def timeout_connect_args(url, connect_timeout: float | None,
                         statement_timeout: float | None) -> dict:
    """``connect_args`` bounding how long a PostgreSQL connection may take to open
    (libpq ``connect_timeout``, whole seconds, at least 2 as libpq counts them) and a
    statement may run (``statement_timeout``, sent as a startup option so it holds
    for every transaction of the connection).  Other databases: nothing."""
    if make_url(url).get_backend_name() != "postgresql":
        return {}
    args: dict = {}
    if connect_timeout:
        args["connect_timeout"] = max(2, math.ceil(connect_timeout))
    if statement_timeout:
        args["options"] = f"-c statement_timeout={max(1, round(statement_timeout * 1000))}"
    return args


def get_engine(settings, prefix: str = "sqlalchemy.", demo=None):
    """The engine of ``sqlalchemy.*``; with the demo's settings, bounded by
    ``demo.db_connect_timeout`` and ``demo.db_statement_timeout``."""
    kwargs = {}
    if demo is not None:
        connect_args = timeout_connect_args(settings[prefix + "url"], demo.db_connect_timeout,
                                            demo.db_statement_timeout)
        if connect_args:
            kwargs["connect_args"] = connect_args
    return engine_from_config(settings, prefix, **kwargs)


def get_session_factory(engine):
    factory = sessionmaker()
    factory.configure(bind=engine)
    return factory


def get_tm_session(session_factory, transaction_manager, request=None, cache=None):
    """A session joined to ``transaction_manager``, whose flushes invalidate the
    models' cache keys after the commit: through ``request`` (its transaction is
    then marked dirty by writes), or through ``cache`` (a CachePolicy, for
    scripts).

    ::

        import transaction
        with transaction.manager:
            dbsession = get_tm_session(session_factory, transaction.manager)
            dbsession.add(...)
    """
    dbsession = session_factory()
    zope.sqlalchemy.register(dbsession, transaction_manager=transaction_manager)
    if request is not None or cache is not None:
        register_cache(dbsession, request if request is not None else cache)
    return dbsession


def includeme(config) -> None:
    """Add ``request.dbsession`` (use ``config.include('demo_app.models')``)."""
    settings = config.get_settings()
    settings["tm.manager_hook"] = "pyramid_tm.explicit_manager"
    config.include("pyramid_tm")

    demo = config.registry.get("demo.settings")
    engine = get_engine(settings, demo=demo)
    session_factory = get_session_factory(engine)
    config.registry["dbsession_factory"] = session_factory
    config.registry["dbengine"] = engine

    def dbsession(request):
        return get_tm_session(session_factory, request.tm, request=request)

    config.add_request_method(dbsession, reify=True)
