import logging

import pytest

from ..conftest import private_database


@pytest.fixture(scope="session")
def cache_pg_url():
    """The cache tests' own database (their test table is not the demo's schema)."""
    with private_database("cache") as url:
        yield url


@pytest.fixture
def quiet_tracking_log():
    """The tracked-path machines lose the tracking connection at every other step: its
    warnings would fill the output."""
    logger = logging.getLogger("pyramid_examcache.cache.backends")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)
