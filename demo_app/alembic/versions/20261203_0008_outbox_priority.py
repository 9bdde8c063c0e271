"""mail outbox: priority (pyramid_examcache release 4 column)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 04:00:00
"""
from alembic import op

from pyramid_examcache.mail.outbox import add_new_columns, drop_new_columns

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    add_new_columns(op, 4)


def downgrade():
    drop_new_columns(op, 4)
