import pytest

from ..conftest import private_database


@pytest.fixture(scope="session")
def cache_pg_url():
    """The cache tests' own database (their test table is not the demo's schema)."""
    with private_database("cache") as url:
        yield url
