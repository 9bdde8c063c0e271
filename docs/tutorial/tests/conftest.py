import pytest
import webtest

from myproject import main
from myproject.models.meta import Base
from pyramid_examcache.mail import outbox


@pytest.fixture
def app(tmp_path):
    settings = {
        'sqlalchemy.url': f'sqlite:///{tmp_path}/test.sqlite',
        # the cache in this process: the same leases, tags and invalidation after the
        # commit as Redis, and a fresh cache for every app
        'examcache.redis_url': 'memory://',
        # queued mail runs in this process right after the commit, into a capture
        'pyramid.includes': 'pyramid_examcache.testing',
    }
    app = main({}, **settings)
    engine = app.registry['dbsession_factory'].kw['bind']
    Base.metadata.create_all(engine)
    outbox.metadata.create_all(engine)
    yield app
    engine.dispose()


@pytest.fixture
def testapp(app):
    # every request commits, as in production: no shared, rolled-back transaction
    return webtest.TestApp(app)


@pytest.fixture
def one(app):
    """The row `one`, committed (initialize_myproject_db's fixture)."""
    from pyramid.scripting import prepare

    from myproject.scripts.initialize_db import setup_models

    with prepare(registry=app.registry) as env, env['request'].tm:
        setup_models(env['request'].dbsession)
