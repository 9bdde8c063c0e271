from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from pyramid_examcache.mail.outbox import metadata as outbox_metadata

from ..conftest import free_port, private_database
from .support import SMTPServer, app_metadata


@pytest.fixture(scope="session")
def pg_url():
    """The mail tests' own database: their outbox and test tables are not the demo's schema."""
    with private_database("mail") as url:
        yield url


@pytest.fixture(scope="session")
def mail_engine(pg_url):
    """An engine on the session's PostgreSQL database with the outbox and test tables."""
    engine = create_engine(pg_url)
    outbox_metadata.create_all(engine)
    app_metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db(mail_engine):
    """The engine, with the outbox and test tables emptied before the test."""
    with mail_engine.begin() as conn:
        conn.execute(text("DELETE FROM examcache_mail_outbox"))
        conn.execute(text("DELETE FROM mailtest_users"))
    return mail_engine


@pytest.fixture
def smtp_server():
    server = SMTPServer(free_port())
    server.start()
    yield server
    server.stop()
