"""mail outbox: failed_recipients and retried_at (pyramid_examcache M3/M4)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 00:00:01
"""
from alembic import op

from pyramid_examcache.mail.outbox import add_new_columns, drop_new_columns

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    add_new_columns(op)


def downgrade():
    drop_new_columns(op)
