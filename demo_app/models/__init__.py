"""Models and the cookiecutter's session wiring.

``request.dbsession`` is a SQLAlchemy session bound to the request's
transaction manager (pyramid_tm + zope.sqlalchemy) and registered with
pyramid_examcache (``pyramid_examcache.register``), which invalidates the keys
the models declare once the database has committed.
"""
from __future__ import annotations

import zope.sqlalchemy
from pyramid_examcache import register as register_cache
from sqlalchemy import engine_from_config
from sqlalchemy.orm import configure_mappers, sessionmaker

from .exam import Exam, Question
from .meta import Base
from .user import User

configure_mappers()

__all__ = ["Base", "User", "Exam", "Question", "get_engine", "get_session_factory",
           "get_tm_session", "includeme"]


def get_engine(settings, prefix: str = "sqlalchemy."):
    return engine_from_config(settings, prefix)


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

    engine = get_engine(settings)
    session_factory = get_session_factory(engine)
    config.registry["dbsession_factory"] = session_factory
    config.registry["dbengine"] = engine

    def dbsession(request):
        return get_tm_session(session_factory, request.tm, request=request)

    config.add_request_method(dbsession, reify=True)
