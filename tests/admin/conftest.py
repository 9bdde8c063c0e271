"""The admin page's add-on tests run on SQLite and on a private PostgreSQL database (the
search must be portable): one outbox per test, emptied afterwards."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from pyramid_examcache.mail.outbox import metadata, outbox_table

from ..conftest import private_database
from .support import admin_app


@pytest.fixture(scope="session")
def admin_pg_url():
    with private_database("admin") as url:
        engine = create_engine(url, poolclass=NullPool)
        metadata.create_all(engine)
        engine.dispose()
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/admin.sqlite"
        engine = create_engine(url)
        metadata.create_all(engine)
        engine.dispose()
        return url
    return request.getfixturevalue("admin_pg_url")


@pytest.fixture
def engine(db_url):
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(outbox_table.delete())
    yield engine
    with engine.begin() as conn:
        conn.execute(outbox_table.delete())
    engine.dispose()


@pytest.fixture
def app(db_url, engine):
    return admin_app(db_url, engine=engine)
