"""Fixtures for the demo app's functional tests.

Requests really commit here (no shared doomed transaction): the PostgreSQL
schema is created once per session by the Alembic migrations, and every test
starts from freshly truncated tables with the sample data reloaded, a fresh
Redis key prefix, and the mailer in-process with captured delivery
(``pyramid_examcache.testing``).
"""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from webtest import TestApp

import demo_app
from demo_app.sample import TEACHER_PASSWORD, load_sample_data
from demo_app.scripts.initialize_db import upgrade
from demo_app.security import hash_password, make_password_hasher
from demo_app.settings import parse_demo_settings
from pyramid_examcache.cache import get_policy
from pyramid_examcache.mail import get_mail_queue
from pyramid_examcache.testing import get_mail_capture

from .hooks import include_failure_hooks

SECRET = "test-secret-0123456789abcdef"
PUBLIC_URL = "https://exams.example.com"
TABLES = "users, exams, questions, examcache_mail_outbox"

#: argon2 at its cheapest: the tests hash many passwords
FAST_ARGON2 = {"demo.argon2_time_cost": "1", "demo.argon2_memory_cost": "8",
               "demo.argon2_parallelism": "1"}


def base_settings(db_url: str, **extra) -> dict:
    settings = {
        "sqlalchemy.url": db_url,
        "examcache.redis_url": "memory://",
        "mail.default_sender": "Exam Platform <no-reply@example.com>",
        "demo.secret": SECRET,
        "demo.public_url": PUBLIC_URL,
        **FAST_ARGON2,
    }
    settings.update(extra)
    return settings


def make_testapp(settings: dict) -> TestApp:
    config = demo_app.make_config(dict(settings))
    config.include("pyramid_examcache.testing")
    include_failure_hooks(config)
    return TestApp(config.make_wsgi_app())


def close_testapp(testapp: TestApp) -> None:
    registry = testapp.app.registry
    registry["dbengine"].dispose()
    get_policy(registry).close()
    get_mail_queue(registry).close()
    registry["demo.throttle"].close()


@pytest.fixture(scope="session")
def teacher_hash() -> str:
    hasher = make_password_hasher(parse_demo_settings({"demo.secret": SECRET,
                                                          "demo.public_url": PUBLIC_URL,
                                                          **FAST_ARGON2}))
    return hash_password(hasher, TEACHER_PASSWORD)


@pytest.fixture(scope="session")
def pg_engine(pg_url):
    engine = create_engine(pg_url, poolclass=NullPool)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db(pg_engine, teacher_hash):
    """The migrated PostgreSQL database, truncated and reloaded with the sample data."""
    with pg_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    with Session(pg_engine) as session, session.begin():
        load_sample_data(session, teacher_hash)
    return pg_engine


@pytest.fixture
def settings(db, redis_url, redis_prefix) -> dict:
    return base_settings(db.url.render_as_string(hide_password=False),
                         **{"examcache.redis_url": redis_url,
                            "examcache.key_prefix": redis_prefix})


@pytest.fixture
def app(settings):
    testapp = make_testapp(settings)
    yield testapp
    close_testapp(testapp)


@pytest.fixture
def mail(app):
    capture = get_mail_capture(app)
    capture.clear()
    return capture
