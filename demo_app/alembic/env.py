"""Alembic environment for demo_app.

The database URL is, in order: a connection handed in by the caller
(``config.attributes["connection"]``, used by ``examcache-initdb``), the
``sqlalchemy.url`` main option, or the ``sqlalchemy.url`` of the ``[app:main]``
section when alembic is pointed at an app .ini (``alembic -c development.ini``).
"""
from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from demo_app.models.meta import Base
from pyramid_examcache.cache.invalidation_log import metadata as cache_metadata
from pyramid_examcache.mail.outbox import metadata as mail_metadata

config = context.config
target_metadata = [Base.metadata, mail_metadata, cache_metadata]


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    if config.config_file_name:
        from pyramid.paster import get_appsettings

        return get_appsettings(config.config_file_name)["sqlalchemy.url"]
    raise RuntimeError("no sqlalchemy.url: pass an app .ini (alembic -c development.ini)")


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = engine_from_config({"sqlalchemy.url": _url()}, prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
