"""the durable cache invalidation log (pyramid_examcache G6)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 00:00:00
"""
from alembic import op

from pyramid_examcache.cache.invalidation_log import create_invalidation_log, drop_invalidation_log

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    create_invalidation_log(op)


def downgrade():
    drop_invalidation_log(op)
