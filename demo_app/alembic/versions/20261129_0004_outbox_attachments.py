"""mail outbox: attachments (pyramid_examcache release 2 columns)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 00:00:02
"""
from alembic import op

from pyramid_examcache.mail.outbox import add_new_columns, drop_new_columns

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    add_new_columns(op, 2)


def downgrade():
    drop_new_columns(op, 2)
