"""Models and the cookiecutter's session wiring.

``request.dbsession`` is a SQLAlchemy session bound to the request's
transaction manager (pyramid_tm + zope.sqlalchemy) and carrying the request in
``session.info`` -- which is how pyramid_examcache's ORM hook finds
``request.cache`` to invalidate the keys the models declare, after the commit.
"""
from __future__ import annotations

import zope.sqlalchemy
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


def get_tm_session(session_factory, transaction_manager, request=None):
    """A session joined to ``transaction_manager``; pass ``request`` so the
    cache add-on can defer the models' invalidations to that request's commit.

    ::

        import transaction
        with transaction.manager:
            dbsession = get_tm_session(session_factory, transaction.manager)
            dbsession.add(...)
    """
    dbsession = session_factory(info={"request": request})
    zope.sqlalchemy.register(dbsession, transaction_manager=transaction_manager)
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
