"""The Alembic migrations and the models (plus the mail outbox and the cache's
invalidation log) agree, on PostgreSQL."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from demo_app.models import Base
from pyramid_examcache.cache.invalidation_log import metadata as cache_metadata
from pyramid_examcache.mail.outbox import metadata as mail_metadata


def test_migrated_schema_matches_the_models(pg_engine):
    # the session's database is shared with other test packages: compare our tables only
    metadatas = [Base.metadata, mail_metadata, cache_metadata]
    ours = {name for m in metadatas for name in m.tables} | {"alembic_version"}

    def include_name(name, type_, parent_names):
        return type_ != "table" or name in ours

    with pg_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "include_name": include_name})
        assert context.get_current_revision() == "0008"
        diff = compare_metadata(context, metadatas)
    assert diff == []
