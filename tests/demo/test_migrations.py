"""The Alembic migration and the models (plus the mail outbox) agree, on PostgreSQL."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from demo_app.models import Base
from pyramid_examcache.mail.outbox import metadata as mail_metadata


def test_migrated_schema_matches_the_models(pg_engine):
    # the session's database is shared with other test packages: compare our tables only
    ours = set(Base.metadata.tables) | set(mail_metadata.tables) | {"alembic_version"}

    def include_name(name, type_, parent_names):
        return type_ != "table" or name in ours

    with pg_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "include_name": include_name})
        assert context.get_current_revision() == "0001"
        diff = compare_metadata(context, [Base.metadata, mail_metadata])
    assert diff == []
